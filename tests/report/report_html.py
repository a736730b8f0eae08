"""Parse a report's HTML with the standard library (html.parser) for the tests."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class ReportParser(HTMLParser):
    """Collects tables (id -> header texts and rows of (text, data-v)) and <img> attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self._table: dict | None = None
        self._cell: dict | None = None
        self._row: list | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = {"head": [], "rows": []}
            self.tables[a.get("id") or f"table{len(self.tables)}"] = self._table
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self._table is not None and not self._in_head:
            self._row = []
            self._table["rows"].append(self._row)
        elif tag in ("td", "th"):
            self._cell = {"text": "", "v": a.get("data-v")}
        elif tag == "img":
            self.images.append(a)
        if tag in ("a", "link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            if tag == "th" or self._in_head:
                self._table["head"].append(self._cell["text"].strip())
            elif self._row is not None:
                self._row.append((self._cell["text"].strip(), self._cell["v"]))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return parser
