"""Reading a configuration: strict YAML, plain-text files, values that keep the problem meaningful."""

from __future__ import annotations

import pytest

from fourdvar.app.config import MAX_NODES, ConfigError, load_config, parse_yaml, short

MODEL = "model: {type: lorenz96, n_state: 8}\n"


def test_yaml_1_2_floats_are_numbers():
    values = parse_yaml("a: 1e6\nb: 1.0e6\nc: -1E-3\nd: +2.5e-1\ne: 7\nf: '1e6'\ng: .5\n")
    assert values == {"a": 1e6, "b": 1e6, "c": -1e-3, "d": 0.25, "e": 7, "f": "1e6", "g": 0.5}
    assert type(values["e"]) is int


def test_duplicate_keys_are_refused_merge_keys_are_not():
    with pytest.raises(Exception, match=r"duplicate key 'seed' \(first at line 1\)"):
        parse_yaml("seed: 1\nseed: 2\n")
    with pytest.raises(Exception, match="duplicate key 'steps'"):
        parse_yaml("window:\n  steps: 1\n  steps: 2\n")
    assert parse_yaml("base: &b {steps: 1}\nwindow:\n  <<: *b\n  steps: 2\n")["window"] == {"steps": 2}


def test_an_alias_bomb_is_refused_before_it_is_built():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match=r"expands to 4.9e\+08 nodes"):
        parse_yaml("\n".join(lines))
    small = "\n".join(lines[:4])  # 9^4 leaves: a legitimate use of aliases
    assert len(parse_yaml(small)["a3"]) == 9 and 9**4 < MAX_NODES


@pytest.mark.parametrize("content, expected", [
    (b"\x00\x01binary", "a binary file"),
    ("title: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 1)"),
    (b"seed: 1\nseed: 2\n", "YAML syntax error at line 2, column 1: duplicate key 'seed'"),
])
def test_unreadable_text_is_one_line(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_utf8_config_with_a_bom_reads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("\ufefftitle: café\n".encode("utf-8") + MODEL.encode())
    assert load_config(path)["title"] == "café"


@pytest.mark.parametrize("text, expected", [
    ("seed: -1\n", "seed: must be >= 0, got -1"),
    ("observations: {error_std: 1e300}\n", "observations.error_std: must lie between 1e-100 and 1e+100 (1/std^2 would underflow"),
    ("observations: {error_std: 1e-200}\n", "1/std^2 would overflow"),
    ("background: {params: {error_std: .inf}}\n", "background.params.error_std: expected finite numbers, got inf"),
    ("background: {params: {error_std: [1, .nan]}}\n", "expected finite numbers"),
    ("observations: {error_std: 0}\n", "must be positive"),
])
def test_values_that_make_the_problem_meaningless_are_refused(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(MODEL + text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("^", r"\^").replace("+", r"\+")):
        load_config(path)
    path.write_text(MODEL)
    assert load_config(path)["seed"] == 0  # negative control: the same file without the value is fine


def test_long_values_are_cut_in_messages(tmp_path):
    assert len(short("x" * 10_000)) <= 60
    path = tmp_path / "c.yaml"
    path.write_text(MODEL + "title: [" + ", ".join(["1"] * 5000) + "]\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "title: expected a string" in str(error.value) and len(str(error.value)) < 200
