from rscrisis.errors import (
    EXIT_BAD_INPUT,
    EXIT_RUNTIME,
    BandError,
    InputError,
    ProcessingError,
    RscrisisError,
)


def test_exit_codes_follow_design():
    assert RscrisisError("x").exit_code == EXIT_RUNTIME == 1
    assert ProcessingError("x").exit_code == 1
    assert InputError("x").exit_code == EXIT_BAD_INPUT == 2
    assert BandError("x").exit_code == 2


def test_message_names_file_problem_and_fix():
    err = BandError("band 5 does not exist", path="scene.tif", hint="fix --bands")
    assert str(err) == "scene.tif: band 5 does not exist — fix --bands"
    assert "\n" not in str(err)
