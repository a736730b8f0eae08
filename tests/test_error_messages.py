"""MedsegError messages and option checks."""

import pytest

from medseg.errors import DataError, MedsegError, UsageError, check_option, closest


def test_message_names_path_first():
    err = DataError("label map holds NaN", "/data/case1.nii.gz")
    assert str(err) == "/data/case1.nii.gz: label map holds NaN"
    assert err.exit_code == 1 and isinstance(err, MedsegError) and isinstance(err, ValueError)


def test_usage_error_exit_code_is_2():
    assert UsageError("x").exit_code == 2


def test_check_option_suggests_closest():
    assert check_option("dice", ["dice", "ce"], "loss") == "dice"
    with pytest.raises(UsageError, match=r"unknown loss 'dcie'.*did you mean 'dice'"):
        check_option("dcie", ["dice", "ce", "dice_ce"], "loss")
    assert closest("zzzz", ["dice", "ce"]) is None


def test_check_keywords_names_owner_and_closest():
    from medseg.errors import check_keywords

    check_keywords(["depth"], ["depth", "width"], "model 'unet3d'")
    with pytest.raises(UsageError, match=r"unknown option 'widht' for model 'unet3d'.*"
                                         r"did you mean 'width'"):
        check_keywords(["depth", "widht"], ["depth", "width"], "model 'unet3d'")
