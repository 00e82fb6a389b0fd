"""Messages a user meets when a model or operator is named or configured wrongly."""

from __future__ import annotations

import pytest
import yaml
from conftest import run_command

from fourdvar.registry import RegistryError, build_model, build_operator


@pytest.mark.parametrize("spec, wrong, right", [
    ({"type": "lorenz96", "n_states": 8}, "n_states", "n_state"),
    ({"type": "mlp", "layer_size": [3, 4, 3], "activations": ["tanh", "identity"]}, "layer_size", "layer_sizes"),
    ({"type": "lorenz96", "n_state": 8, "forcnig": 8.0}, "forcnig", "forcing"),
])
def test_a_misspelt_model_option_gets_did_you_mean(spec, wrong, right):
    with pytest.raises(TypeError) as error:
        build_model(spec)
    message = str(error.value)
    assert f"has no option {wrong!r}; did you mean {right!r}?" in message
    assert "its options: " in message and right in message.split("its options: ")[1]


def test_a_misspelt_operator_option_gets_did_you_mean():
    with pytest.raises(TypeError, match=r"Tanh has no option 'scal'; did you mean 'scale'\?"):
        build_operator({"type": "tanh", "n_state": 4, "scal": 2.0})


def test_an_option_far_from_any_gets_the_list_without_a_guess():
    with pytest.raises(TypeError) as error:
        build_model({"type": "lorenz96", "n_state": 8, "colour": "red"})
    assert "did you mean" not in str(error.value) and "its options: n_state, forcing" in str(error.value)


def test_a_module_that_cannot_be_imported_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError) as error:
        build_model({"type": "no_such_user_module:Model"})
    message = str(error.value)
    assert "cannot import module 'no_such_user_module'" in message
    assert f"looked in {tmp_path}" in message
    assert "add the directory holding no_such_user_module.py to PYTHONPATH" in message


def test_the_command_line_reports_a_wrong_option_in_one_line_naming_the_key(tmp_path):
    config = {"seed": 1, "model": {"type": "lorenz96", "n_states": 8}, "window": {"steps": 4, "cycles": 1}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    result = run_command("check", "experiment.yaml", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "model" in line and "did you mean 'n_state'?" in line and "Traceback" not in line
