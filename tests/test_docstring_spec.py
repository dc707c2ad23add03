"""The docstring specification parser: good docstrings parse, each bad one names its line."""

from __future__ import annotations

import dataclasses

import pytest

from mlcomponent.spec.docstring import DocstringSpecError, parse_docstring, spec_of

GOOD = '''Classify things.

    Some free text that is not a section.

    Inputs:
        image (FILE, shape=[1], content_type=image/png): a photo,
            continued on the next line.
        features (FP32, shape=[-1, 4], range=[0, 10]): measurements.
        mode (BYTES, values=["a, b", c], optional): a mode.

    Outputs:
        label (INT32, shape=[-1]): the class.
        scores (FP64, shape=[-1, 3], optional, nan): scores.

    Parameters:
        top_k (int, default=3, range=[1, 10]): how many.
        name (str, optional): a name.
        strict (bool, default=true): be strict.

    Example:
        inputs:
          features: [[1, 2, 3, 4]]
        parameters:
          top_k: 2
    '''


def test_a_complete_docstring_parses() -> None:
    spec = parse_docstring(GOOD)
    assert spec.declared and spec.summary == "Classify things."
    image, features, mode = spec.inputs
    assert (image.datatype, image.shape, image.content_type) == ("FILE", (1,), "image/png")
    assert image.description == "a photo, continued on the next line."
    assert (features.shape, features.range) == ((-1, 4), (0.0, 10.0))
    assert mode.datatype == "str" and mode.values == ("a, b", "c") and mode.optional
    assert [t.name for t in spec.default_outputs] == ["label"]
    assert spec.outputs_by_name["scores"].allow_nan
    top_k, name, strict = spec.parameters
    assert (top_k.type, top_k.default, top_k.range, top_k.required) == ("int", 3, (1.0, 10.0), False)
    assert name.required is False and name.has_default is False
    assert strict.default is True
    assert spec.example == {"inputs": {"features": [[1, 2, 3, 4]]}, "parameters": {"top_k": 2}}


def test_replace_builds_its_own_lookups() -> None:
    """The ``*_by_name`` lookups are derived: a replaced spec neither shares nor inherits stale ones."""
    spec = parse_docstring(GOOD)
    fewer = dataclasses.replace(spec, inputs=spec.inputs[:1])
    assert list(fewer.inputs_by_name) == ["image"]
    assert list(spec.inputs_by_name) == ["image", "features", "mode"]
    assert fewer.outputs_by_name is not spec.outputs_by_name
    assert fewer.parameters_by_name == spec.parameters_by_name
    assert "inputs_by_name" not in {f.name for f in dataclasses.fields(spec) if f.init}


def test_a_docstring_without_sections_declares_nothing() -> None:
    spec = parse_docstring("Just prose.\n\n    Args:\n        x: whatever\n    ")
    assert not spec.declared and spec.summary == "Just prose."
    assert not parse_docstring(None).declared


@pytest.mark.parametrize(
    ("line", "bad", "needle"),
    [
        (4, "x (FP16): bad type", "unknown datatype 'FP16'"),
        (4, "x FP32 no parens", "cannot read"),
        (4, "x (shape=[1]): no type", "first item in parentheses must be the type"),
        (4, "x (FP32, shape=[a]): bad shape", "shape of 'x' must be a list of sizes"),
        (4, "x (FP32, colour=red): unknown", "unknown attribute 'colour'"),
        (4, "x (FP32, sometimes): unknown flag", "unknown flag 'sometimes'"),
        (4, "x (FP32, range=[5, 1]): backwards", "range must be [low, high]"),
        (4, "x (FP32, content_type=image/png): not a file", "content_type applies to FILE only"),
    ],
)
def test_bad_input_entries_name_their_line(line: int, bad: str, needle: str) -> None:
    doc = f"Summary.\n\n    Inputs:\n        {bad}\n    "
    with pytest.raises(DocstringSpecError) as caught:
        parse_docstring(doc)
    assert str(caught.value).startswith(f"docstring line {line}:")
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("n (integer): bad", "unknown parameter type 'integer'"),
        ("n (int, default=1.5): bad default", "default of 'n': must be of type int"),
        ("n (int, default=20, range=[0, 10]): out", "outside the allowed range [0, 10]"),
        ("n (str, values=[a, b], default=c): not allowed", "'c' is not one of ['a', 'b']"),
    ],
)
def test_bad_parameters_name_their_line(entry: str, needle: str) -> None:
    doc = f"Summary.\n\n    Inputs:\n        x (FP32): x.\n\n    Parameters:\n        {entry}\n    "
    with pytest.raises(DocstringSpecError) as caught:
        parse_docstring(doc)
    assert str(caught.value).startswith("docstring line 7:") and needle in str(caught.value)


def test_duplicates_and_repeated_sections_are_errors() -> None:
    with pytest.raises(DocstringSpecError, match="docstring line 5: 'x' is declared twice"):
        parse_docstring("S.\n\n    Inputs:\n        x (FP32): a\n        x (FP32): b\n    ")
    with pytest.raises(DocstringSpecError, match="docstring line 5: section 'Inputs' appears twice"):
        parse_docstring("S.\n\n    Inputs:\n        x (FP32): a\n    Inputs:\n    ")


@pytest.mark.parametrize(
    ("example", "needle"),
    [
        ("inputs:\n          y: [1]", "Example input 'y' is not declared"),
        ("inputs: {x: [1]}\n        parameters: {n: 99}", "Example parameter 'n': 99 is outside"),
        ("- just a list", "Example must be a mapping"),
        ("inputs: [unclosed", "Example is not valid YAML"),
    ],
)
def test_bad_examples_name_their_line(example: str, needle: str) -> None:
    doc = ("S.\n\n    Inputs:\n        x (FP32): x.\n    Parameters:\n        n (int, range=[0, 5], optional): n."
           f"\n    Example:\n        {example}\n    ")
    with pytest.raises(DocstringSpecError) as caught:
        parse_docstring(doc)
    assert str(caught.value).startswith("docstring line 8:") and needle in str(caught.value)


def test_errors_also_name_the_source_line() -> None:
    import tests.fixtures.entrypoints.bad_docstring as module

    with pytest.raises(DocstringSpecError) as caught:
        spec_of(module.inference)
    assert str(caught.value).startswith("docstring line 4 (source line 5):")


BILLION_LAUGHS = "\n".join(
    [f"    l0: &l0 [{', '.join(['1'] * 10)}]"]
    + [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    + ["    inputs:", f"      x: [{', '.join(['*l8'] * 10)}]"])


def test_an_example_whose_aliases_expand_to_a_billion_values_is_refused_at_once() -> None:
    """An Example of under a kilobyte naming 10^9 values (anchors and aliases): refused, as the manifest
    loader refuses one, without building it."""
    doc = f"Add.\n\nArgs:\n    x (FP32, shape [-1]): numbers.\n\nExample:\n{BILLION_LAUGHS}\n"
    assert len(BILLION_LAUGHS) < 1000
    with pytest.raises(DocstringSpecError, match="more than 10,000 values once anchors and aliases are expanded"):
        parse_docstring(doc)
