"""The config system: strict keys with suggestions, field groups, ${ENV} substitution, --set overrides."""

import pytest

from core.config import BaseConfig, ConfigError, apply_overrides, dump_yaml, load_config, substitute_env


class Inner(BaseConfig):
    exactly_one_of = (("a", "b"),)
    at_most_one_of = (("c", "d"),)
    a: int | None = None
    b: int | None = None
    c: str | None = None
    d: str | None = None


class Outer(BaseConfig):
    name: str
    layer_sizes: list[int] = [1]
    inner: dict[str, Inner] = {}


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_path_and_suggestion(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  t1:\n    a: 1\n    bb: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, Outer)
    text = str(err.value)
    assert str(path) in text
    assert "inner.t1.bb: unknown key; did you mean 'inner.t1.b'?" in text


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"name: missing required key"):
        load_config(write(tmp_path, "layer_sizes: [2]\n"), Outer)


def test_wrong_type_names_path_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"layer_sizes\[1\]: .*integer.*'two'"):
        load_config(write(tmp_path, "name: x\nlayer_sizes: [1, two]\n"), Outer)


def test_field_groups():
    assert Inner(a=1).which(("a", "b")) == "a"
    with pytest.raises(ValueError, match="exactly one of a, b must be set \\(got none\\)"):
        Inner()
    with pytest.raises(ValueError, match="exactly one of a, b must be set \\(got a, b\\)"):
        Inner(a=1, b=2)
    with pytest.raises(ValueError, match="at most one of c, d"):
        Inner(a=1, c="x", d="y")
    Inner(a=1, c="x")


def test_env_substitution(tmp_path):
    env = {"N": "3", "WHO": "me"}
    assert substitute_env({"x": "${N}", "y": "run-${WHO}", "z": ["${UNSET:-7}"]}, env=env) == {
        "x": "3",
        "y": "run-me",
        "z": ["7"],
    }
    with pytest.raises(ConfigError, match=r"\$\{MISSING\} is not set \(used at a.b\)"):
        substitute_env({"a": {"b": "${MISSING}"}}, env={})


@pytest.mark.parametrize("value", ["12:30", "0755", "2024_01", "[unclosed", "1e3", "true", "007"])
def test_a_substituted_string_stays_as_written(tmp_path, value, monkeypatch):
    monkeypatch.setenv("ML_RUN", value)
    path = write(tmp_path, "name: ${ML_RUN}\n")
    assert load_config(path, Outer).name == value


def test_a_substituted_value_takes_the_type_of_its_field(tmp_path, monkeypatch):
    monkeypatch.setenv("N", "9")
    monkeypatch.setenv("SIZES", "[4, 5]")
    path = write(tmp_path, "name: x\ninner:\n  t:\n    a: ${N}\nlayer_sizes: ${SIZES}\n")
    cfg = load_config(path, Outer)
    assert cfg.inner["t"].a == 9 and cfg.layer_sizes == [4, 5]
    monkeypatch.setenv("N", "12:30")
    with pytest.raises(ConfigError, match="inner.t.a"):
        load_config(path, Outer)


def test_a_key_written_twice_is_an_error_naming_both_lines(tmp_path):
    path = write(tmp_path, "name: a\ninner:\n  t: {a: 1}\nname: b\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML:[\s\S]*key 'name' appears twice in one mapping "
                                          r"\(lines 1 and 4\)"):
        load_config(path, Outer)


def test_a_quoted_number_is_fine_for_a_number_field(tmp_path):
    path = write(tmp_path, "name: x\nlayer_sizes: ['4', \"5\"]\n")
    assert load_config(path, Outer).layer_sizes == [4, 5]


def test_overrides_are_typed_by_schema(tmp_path):
    path = write(tmp_path, "name: x\ninner: {t: {a: 1}}\n")
    cfg = load_config(path, Outer, ["layer_sizes=[4, 5]", "inner.t.a=9", "name=123"])
    assert cfg.layer_sizes == [4, 5] and cfg.inner["t"].a == 9 and cfg.name == "123"
    with pytest.raises(ConfigError, match="inner.t.zz: unknown key"):
        load_config(path, Outer, ["inner.t.zz=1"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(path, Outer, ["novalue"])
    assert apply_overrides({"l": [{"a": 1}]}, ["l.0.a=2"]) == {"l": [{"a": 2}]}


def test_dump_is_loadable(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\n"), Outer)
    again = load_config(write(tmp_path, dump_yaml(cfg)), Outer)
    assert again == cfg


def test_extends_merges_mappings_and_replaces_other_values(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER", "7")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(
        "name: base\nlayer_sizes: [1, 2]\ninner:\n  t1: {a: 1, c: x}\n  t2: {b: 2}\n")
    (tmp_path / "configs" / "middle.yaml").write_text("extends: base.yaml\ninner:\n  t1: {c: null, d: y}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: configs/middle.yaml\nlayer_sizes: ['${LAYER}']\ninner:\n  t3: {a: 3}\n")
    config = load_config(child, Outer, ["inner.t2.b=5"])
    assert config.name == "base" and config.layer_sizes == [7]
    assert config.inner["t1"] == Inner(a=1, d="y")
    assert config.inner["t2"].b == 5 and config.inner["t3"].a == 3


def test_extends_errors_name_the_file(tmp_path):
    loop = write(tmp_path, "extends: c.yaml\nname: x\n")
    with pytest.raises(ConfigError, match="`extends` forms a cycle"):
        load_config(loop, Outer)
    missing = write(tmp_path, "extends: nowhere.yaml\nname: x\n")
    with pytest.raises(ConfigError, match=r"c.yaml: `extends: nowhere.yaml` names no file"):
        load_config(missing, Outer)
    wrong = write(tmp_path, "extends: [a.yaml]\nname: x\n")
    with pytest.raises(ConfigError, match="must be the path of a base config file"):
        load_config(wrong, Outer)


class Table(BaseConfig):
    num_embeddings: int


class Tables(BaseConfig):
    tables: dict[str, Table] = {}


def test_set_addresses_a_key_holding_dots(tmp_path):
    path = write(tmp_path, "tables:\n  history.author_id: {num_embeddings: 5}\n  plain: {num_embeddings: 6}\n")
    # The longest run of segments that is an existing key, or the quoted segment.
    config = load_config(path, Tables, ["tables.history.author_id.num_embeddings=7",
                                        'tables."plain".num_embeddings=8'])
    assert config.tables["history.author_id"].num_embeddings == 7 and config.tables["plain"].num_embeddings == 8
    # A quoted key that the YAML does not have yet is created whole, not split at its dots.
    config = load_config(path, Tables, ['tables."history.hashtag".num_embeddings=9'])
    assert config.tables["history.hashtag"].num_embeddings == 9


def test_set_asks_for_quotes_when_two_keys_could_be_meant(tmp_path):
    path = write(tmp_path, "tables:\n  a.b: {num_embeddings: 1}\n  a: {num_embeddings: 2}\n")
    with pytest.raises(ConfigError, match="'a' and 'a.b' are both keys at tables; quote the one meant"):
        load_config(path, Tables, ["tables.a.b.num_embeddings=3"])
    config = load_config(path, Tables, ['tables."a.b".num_embeddings=3'])
    assert config.tables["a.b"].num_embeddings == 3 and config.tables["a"].num_embeddings == 2


@pytest.mark.parametrize("key, problem", [('tables."a.b', "unbalanced double quote"),
                                          ('tables.x"a"', "a quote must open a whole segment"),
                                          ('tables."a"x', "a quoted segment must be followed by a dot"),
                                          ("tables..a", "empty segment")])
def test_a_malformed_key_path_is_named(tmp_path, key, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, "tables: {}\n"), Tables, [f"{key}=1"])


def test_setting_one_of_an_exclusive_group_replaces_the_other(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  t: {a: 1, c: x}\n")
    config = load_config(path, Outer, ["inner.t.b=2", "inner.t.d=y"])
    assert config.inner["t"] == Inner(b=2, d="y")
    # Both members set by overrides is still the group's error; a null does not replace anything.
    with pytest.raises(ConfigError, match="exactly one of a, b must be set"):
        load_config(path, Outer, ["inner.t.b=2", "inner.t.a=3"])
    with pytest.raises(ConfigError, match="exactly one of a, b must be set"):
        load_config(path, Outer, ["inner.t.b=null", "inner.t.a=null"])
    assert load_config(path, Outer, ["inner.t.b=null"]).inner["t"].a == 1


def test_extends_naming_a_directory_says_so(tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(ConfigError, match=r"`extends: base` names a directory .*, not a config file"):
        load_config(write(tmp_path, "extends: base\nname: x\n"), Outer)
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_config(tmp_path / "base", Outer)
