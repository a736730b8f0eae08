"""Self-configuration: a dataset fingerprint and nnU-Net's rules make a pipeline YAML.

``fingerprint`` (what the data is), ``rules`` (pure, hand-checkable nnU-Net rules),
``memory`` (training memory of a network), ``design`` (patch, pooling, batch for a memory
budget), ``plan`` (assembly, time budget), ``render`` (the YAML with reasons, the summary).
"""

from medseg.planning.fingerprint import Fingerprint, compute_fingerprint
from medseg.planning.plan import Plan, PlanOptions, make_plan, make_plans, write_plan
from medseg.planning.render import format_summary, plan_yaml

__all__ = ["Fingerprint", "Plan", "PlanOptions", "compute_fingerprint", "format_summary",
           "make_plan", "make_plans", "plan_yaml", "write_plan"]
