"""torch's formulas, as views.formulas reads them with torchgen, against derivatives.yaml read as plain YAML."""

import os
import threading
import time

import pytest
import torch
import torchgen
import yaml

from distautograd.runtime import anomaly
from distautograd.views import formulas

YAML = os.path.join(os.path.dirname(torchgen.__file__), "packaged", "autograd", "derivatives.yaml")

# node name -> the schema of its entry in derivatives.yaml
OPS = {
    "MulBackward0": "mul.Tensor(Tensor self, Tensor other) -> Tensor",
    "SinBackward0": "sin(Tensor self) -> Tensor",
    "TanhBackward0": "tanh(Tensor self) -> Tensor",
    "ExpBackward0": "exp(Tensor self) -> Tensor",
    "MmBackward0": "mm(Tensor self, Tensor mat2) -> Tensor",
    "AddmmBackward0": "addmm(Tensor self, Tensor mat1, Tensor mat2, *, Scalar beta=1, Scalar alpha=1) -> Tensor",
    "SumBackward0": "sum(Tensor self, *, ScalarType? dtype=None) -> Tensor",
    "DivBackward0": "div.Tensor(Tensor self, Tensor other) -> Tensor",
    "SqrtBackward0": "sqrt(Tensor self) -> Tensor",
    "LogBackward0": "log(Tensor self) -> Tensor",
    "ReluBackward0": "relu(Tensor self) -> Tensor",
    "SigmoidBackward0": "sigmoid(Tensor self) -> Tensor",
}


@pytest.fixture(scope="module")
def entries():
    with open(YAML) as f:
        return {entry["name"]: entry for entry in yaml.safe_load(f)}


@pytest.mark.parametrize("node", sorted(OPS))
def test_each_formula_is_derivatives_yaml_s_own(node, entries):
    entry = entries[OPS[node]]
    found = formulas.of(node)
    assert found is not None and found.op == OPS[node]
    for arg in found.inputs:
        if arg in entry:
            assert found.formulas[arg] == entry[arg], arg


def test_the_node_names_are_the_ones_torch_gives_the_graph():
    x = torch.ones(2, 2, requires_grad=True)
    assert formulas.of(type((x * x).grad_fn).__name__).formulas["self"] == "mul_tensor_backward(grad, other, self.scalar_type())"
    assert formulas.of(type((x * x).grad_fn).__name__).compiled["self"] == "mul_tensor_backward(grad, other, self_scalar_type)"
    assert formulas.input_name((x @ x).grad_fn, 1) == "mat2"


class Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def test_nodes_without_an_entry_say_what_they_are():
    x = torch.ones(2, requires_grad=True)
    assert "custom autograd.Function" in formulas.describe(Twice.apply(x).grad_fn)
    assert formulas.describe(x.view_as(x).grad_fn.next_functions[0][0]).startswith("AccumulateGrad")


def test_a_node_that_cannot_have_an_entry_is_told_apart_without_loading_the_table(monkeypatch):
    """Loading takes seconds (torchgen parses native_functions.yaml): an anomaly in a custom Function
    must not spend them inside the pass it fails, where they count against the pass's timeout."""
    def load():
        raise AssertionError("the table was loaded")

    monkeypatch.setattr(formulas, "_table", load)
    x = torch.ones(2, requires_grad=True)
    custom, leaf = Twice.apply(x).grad_fn, x.view_as(x).grad_fn.next_functions[0][0]
    for node in (custom, leaf):
        assert formulas.of_node(node) is None
        assert formulas.input_name(node, 0) == "input 0"
    assert "custom autograd.Function" in formulas.describe(custom)
    text = anomaly.message(custom, 0, "nan", "w1")
    assert text.startswith("Function 'TwiceBackward' returned nan values in its 0th output.") and "custom" in text
    with pytest.raises(AssertionError, match="the table was loaded"):  # a builtin node does look it up
        formulas.of_node((x * x).grad_fn)


def test_threads_that_ask_while_the_table_loads_wait_for_that_one_load(monkeypatch):
    loads = []

    def load():
        loads.append(threading.get_ident())
        time.sleep(0.2)  # a second thread asks meanwhile
        return {"MulBackward0": formulas.Formula("mul", ["self"], {}, {})}

    monkeypatch.setattr(formulas, "_loaded", None)
    monkeypatch.setattr(formulas, "_load", load)
    threads = [threading.Thread(target=formulas.of, args=("MulBackward0",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(loads) == 1 and formulas.of("MulBackward0").op == "mul"
