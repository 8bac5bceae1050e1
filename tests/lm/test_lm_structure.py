"""The application over the library: LanguageModel follows the layer contract (a Module),
the loss mask belongs to the loss, the CLI lists cells and optimizers from the code's tables,
one version, and the general plateau schedule."""
import numpy as np
import pytest

import fastrnn
from fastrnn import LanguageModel, SentenceBatcher, optim
from fastrnn.cells import CELLS, get_cell
from fastrnn.layers import Layer, Module
from fastrnn.layers.loss import length_mask
from fastrnn.lm import cli


def test_language_model_is_a_module_of_its_layers():
    model = LanguageModel(11, embed_size=4, hidden_size=5, num_layers=2, dropout=0.1)
    assert isinstance(model, Module) and isinstance(model, Layer)
    assert [type(c).__name__ for c in model.children()] == [
        "Embedding", "Dropout", "RecurrentLayer", "Dropout", "Linear", "SoftmaxCrossEntropy"]
    model.eval()
    assert not any(c.training for c in model.children())
    model.train()
    assert all(c.training for c in model.children())
    for name, grad in model.grads.items():   # flat dict over the children's own arrays
        layer, key = name.split(".", 1)
        assert getattr(model, layer).grads[key] is grad


def test_module_refuses_a_non_layer_child():
    with pytest.raises(TypeError, match="head"):
        Module().add_layer("head", object())


def test_recurrent_all_weights_are_the_layer_parameters():
    model = LanguageModel(7, embed_size=3, hidden_size=4, num_layers=2)
    weights = model.rnn.all_weights
    assert len(weights) == 2
    assert weights[1][0] is model.params["rnn.weight_ih_l1"]
    assert weights[0][3] is model.params["rnn.bias_hh_l0"]


def test_loss_mask_is_the_loss_helper_and_the_batcher_calls_it():
    lengths = np.array([2, 0, 3])
    expected = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(length_mask(lengths, 3), expected)
    np.testing.assert_array_equal(SentenceBatcher.mask(lengths, 3), expected)
    with pytest.raises(ValueError, match="lengths"):
        length_mask(np.array([-1]), 2)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_language_model_takes_a_cell_name_or_spec_and_exposes_the_spec(cell):
    by_name = LanguageModel(5, embed_size=3, hidden_size=3, num_layers=1, cell=cell)
    by_spec = LanguageModel(5, embed_size=3, hidden_size=3, num_layers=1, cell=get_cell(cell))
    assert by_name.cell is by_spec.cell is by_name.rnn.cell is get_cell(cell)
    assert by_name.config()["cell"] == cell
    assert get_cell(get_cell(cell)) is get_cell(cell)


def test_cli_lists_the_cells_and_optimizers_of_the_code_tables():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    cell_choices = {a.dest: a.choices for a in sub["train"]._actions}["cell"]
    optimizer_choices = {a.dest: a.choices for a in sub["train"]._actions}["optimizer"]
    assert sorted(cell_choices) == sorted(CELLS)
    assert sorted(optimizer_choices) == sorted(optim.OPTIMIZERS)


def test_one_version():
    from fastrnn._version import __version__
    assert fastrnn.__version__ is __version__


def test_reduce_on_plateau_is_the_general_schedule_and_halving_its_default():
    params = {"w": np.zeros(1)}
    opt = optim.SGD(params, {"w": np.zeros(1)}, lr=1.0)
    schedule = optim.ReduceOnPlateau(opt, factor=0.1)
    schedule.step(1.0)
    assert schedule.step(2.0) and opt.lr == pytest.approx(0.1)
    opt.lr = 1.0
    halve = optim.HalveOnPlateau(opt)
    assert isinstance(halve, optim.ReduceOnPlateau) and halve.factor == 0.5
