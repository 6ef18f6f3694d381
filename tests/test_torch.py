"""paramserver.torch: embedding modules over tables against single-process PyTorch.

One worker, synchronous: after N steps the parameters of a model whose embeddings live on
the servers equal those of the same model in one process with torch's sparse embeddings and
optimizers (SGD, Adagrad) to 1e-5. Bad input fails before anything is sent. In CI (CI set)
a missing torch is a failure, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

if os.environ.get("CI"):
    import torch
else:
    torch = pytest.importorskip("torch")

import paramserver as ps
from paramserver.torch import Embedding, EmbeddingBag, Prefetcher

pytestmark = pytest.mark.cluster
torch.sparse.check_sparse_tensor_invariants.enable()  # the reference's sparse optimizers check their tensors

V, D, STEPS, BATCH = 40, 6, 25, 16
#: Real ids of the V rows: sparse, large, unordered (no vocabulary is declared anywhere).
IDS = (np.arange(V, dtype=np.int64) * 7_919_993 + 2**40)[np.random.default_rng(3).permutation(V)]
TOL = 1e-5


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from conftest import FAST_ENV

    with ps.LocalCluster(servers=2, env=FAST_ENV) as cluster:
        worker = ps.connect(cluster.address)
        yield worker
        worker.close()


class PSModel(torch.nn.Module):
    """An embedding, a bag of the same table in each mode, a linear layer on top."""

    def __init__(self, w: Any, name: str, optimizer: Any, modes: tuple[str, ...]) -> None:
        super().__init__()
        self.emb = Embedding(D, table=name, worker=w, optimizer=optimizer, init=ps.Normal(std=0.5, seed=7))
        self.bags = torch.nn.ModuleList(EmbeddingBag(D, table=self.emb.table, mode=m) for m in modes)
        self.lin = torch.nn.Linear((1 + len(modes)) * D, 1)

    def forward(self, one: Any, bag: Any, weights: Any) -> Any:
        hs = [self.emb(one), *(b(bag, per_sample_weights=weights if b.mode == "sum" else None) for b in self.bags)]
        return self.lin(torch.cat(hs, dim=1)).squeeze(1)


class TorchModel(torch.nn.Module):
    """The same model in one process: nn.Embedding / nn.EmbeddingBag with sparse gradients
    (dense for mode "max", which torch computes only densely)."""

    def __init__(self, weight: np.ndarray, lin: Any, modes: tuple[str, ...]) -> None:
        super().__init__()
        sparse = "max" not in modes
        self.emb = torch.nn.Embedding(V, D, sparse=sparse)
        self.emb.weight.data[:] = torch.from_numpy(weight)
        self.modes, self.sparse = modes, sparse
        self.lin = torch.nn.Linear((1 + len(modes)) * D, 1)
        self.lin.load_state_dict(lin.state_dict())

    def forward(self, one: Any, bag: Any, weights: Any) -> Any:
        wt = self.emb.weight
        hs = [self.emb(one), *(torch.nn.functional.embedding_bag(
            bag, wt, mode=m, per_sample_weights=weights if m == "sum" else None, sparse=self.sparse)
            for m in self.modes)]
        return self.lin(torch.cat(hs, dim=1)).squeeze(1)


def batches(seed: int) -> list[tuple[Any, Any, Any, Any]]:
    """STEPS batches of (row indices of one id, of a bag of 3, bag weights, labels)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        one = torch.from_numpy(rng.integers(0, V, BATCH))
        bag = torch.from_numpy(rng.integers(0, V // 2, (BATCH, 3)))  # half the rows: many repeats
        weights = torch.from_numpy(rng.uniform(0.5, 1.5, (BATCH, 3)).astype(np.float32))
        y = torch.from_numpy((rng.random(BATCH) < 0.5).astype(np.float32))
        out.append((one, bag, weights, y))
    return out


def as_ids(index: Any) -> Any:
    return torch.from_numpy(IDS[index.numpy()])


def train(name: str, w: Any, ps_opt: Any, torch_opt: Any, *, prefetch: bool = False,
          modes: tuple[str, ...] = ("sum", "mean")) -> tuple[float, Any]:
    """Train both models on the same batches; the largest difference of any parameter after."""
    torch.manual_seed(0)
    model = PSModel(w, name, ps_opt, modes)
    ref = TorchModel(model.emb.table.pull(ps.spread(IDS)), model.lin, modes)
    if ref.sparse:
        assert ref.emb.weight.grad is None
    dense = torch_opt([model.lin.weight, model.lin.bias])
    sparse_ref, dense_ref = torch_opt([ref.emb.weight]), torch_opt([ref.lin.weight, ref.lin.bias])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    data = batches(1)
    loader: Any = data
    if prefetch:
        loader = Prefetcher(data, lambda b: [(model.emb, as_ids(b[0])), *((m, as_ids(b[1])) for m in model.bags)])
    for (one, bag, wts, y), (one_r, bag_r, wts_r, y_r) in zip(loader, data, strict=True):
        dense.zero_grad()
        loss_fn(model(as_ids(one), as_ids(bag), wts), y).backward()
        dense.step()
        sparse_ref.zero_grad()
        dense_ref.zero_grad()
        loss_fn(ref(one_r, bag_r, wts_r), y_r).backward()
        sparse_ref.step()
        dense_ref.step()
    for m in (model.emb, *model.bags):
        m.flush()
    rows = model.emb.table.pull(ps.spread(IDS))
    diff = max(float(np.abs(rows - ref.emb.weight.detach().numpy()).max()),
               float((model.lin.weight - ref.lin.weight).abs().max().detach()),
               float((model.lin.bias - ref.lin.bias).abs().max().detach()))
    return diff, model


def test_sgd_equals_single_process_torch(w: Any) -> None:
    diff, model = train("t_sgd", w, ps.SGD(lr=0.3), lambda p: torch.optim.SGD(p, lr=0.3))
    assert diff < TOL
    assert model.emb.stats["pushes"] == STEPS
    # the rows moved: the comparison is not between two untouched tables
    assert float(np.abs(model.emb.table.pull(ps.spread(IDS)) - ps.Normal(std=0.5, seed=7).values(
        ps.spread(IDS), D, np.dtype(np.float32))).max()) > 0.01


def test_max_bags_equal_single_process_torch(w: Any) -> None:
    diff, _ = train("t_max", w, ps.SGD(lr=0.3), lambda p: torch.optim.SGD(p, lr=0.3), modes=("max", "sum"))
    assert diff < TOL


def test_adagrad_equals_single_process_torch(w: Any) -> None:
    diff, _ = train("t_adagrad", w, ps.AdaGrad(lr=0.2), lambda p: torch.optim.Adagrad(p, lr=0.2))
    assert diff < TOL


def test_adagrad_initial_accumulator_matches_torch(w: Any) -> None:
    diff, _ = train("t_adagrad_acc", w, ps.AdaGrad(lr=0.2, initial_accumulator_value=0.1, eps=1e-6),
                    lambda p: torch.optim.Adagrad(p, lr=0.2, initial_accumulator_value=0.1, eps=1e-6))
    assert diff < TOL


def test_prefetching_trains_exactly_as_without(w: Any) -> None:
    diff, model = train("t_prefetch", w, ps.AdaGrad(lr=0.2), lambda p: torch.optim.Adagrad(p, lr=0.2), prefetch=True)
    assert diff < TOL
    stats = model.emb.stats
    lookups = STEPS * (1 + len(model.bags))  # stats are the table's: every module over it
    assert stats["prefetch_hits"] == lookups and stats["pulls"] == lookups and stats["pushes"] == STEPS
    assert stats["rows_refreshed"] > 0  # consecutive batches share rows: those were read again after the push


def test_forward_pulls_only_distinct_ids_and_pushes_their_summed_gradient(w: Any) -> None:
    emb = Embedding(3, table="t_counts", worker=w, optimizer="sum", init="zeros")
    ids = torch.tensor([[5, 2**50, 5], [5, 9, 9]])
    out = emb(ids)
    assert out.shape == (2, 3, 3)
    assert emb.stats["rows_pulled"] == 3  # 5, 2**50, 9
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    emb.flush()
    # the "sum" updater adds the pushed gradient: each row = its count times [1, 2, 3]
    got = emb.table.pull(ps.spread([5, 2**50, 9, 7]))
    np.testing.assert_array_equal(got, np.outer([3, 1, 2, 0], [1, 2, 3]).astype(np.float32))
    assert emb.stats["rows_pushed"] == 3


def test_eval_and_no_grad_push_nothing(w: Any) -> None:
    emb = Embedding(2, table="t_nograd", worker=w)
    with torch.no_grad():
        emb(torch.tensor([1, 2]))
    emb.eval()
    assert not emb(torch.tensor([1, 2])).requires_grad
    assert emb.stats["pushes"] == 0 and emb.table.pushes == 0


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda e, b: e(torch.tensor([1.0, 2.0])), ps.DTypeError, "integer tensor"),
    (lambda e, b: e(torch.tensor([True])), ps.DTypeError, "integer tensor"),
    (lambda e, b: e(torch.tensor([3, -1])), ps.InvalidArgument, "non-negative"),
    (lambda e, b: e([1, 2]), ps.DTypeError, "torch integer tensor"),
    (lambda e, b: b(torch.tensor([1, 2])), ps.InvalidArgument, "offsets"),
    (lambda e, b: b(torch.tensor([1, 2]), torch.tensor([1])), ps.InvalidArgument, "start at 0"),
    (lambda e, b: b(torch.tensor([1, 2]), torch.tensor([0, 3])), ps.InvalidArgument, "len(ids)"),
    (lambda e, b: b(torch.zeros(2, 2, 2, dtype=torch.long)), ps.InvalidArgument, "1-D"),
    (lambda e, b: b(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 3)), ps.InvalidArgument, "match"),
    (lambda e, b: b(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2, dtype=torch.long)),
     ps.DTypeError, "floating"),
])
def test_bad_input_fails_before_anything_is_sent(w: Any, call: Any, error: type, words: str) -> None:
    emb = Embedding(4, table="t_bad", worker=w)
    bag = EmbeddingBag(4, table=emb.table, mode="sum")
    before = (emb.table.pulls, emb.table.pushes)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        call(emb, bag)
    assert (emb.table.pulls, emb.table.pushes) == before


def test_bad_module_arguments(w: Any) -> None:
    t = w.table("t_width", width=3)
    with pytest.raises(ps.InvalidArgument, match="width 3, not embedding_dim=4"):
        Embedding(4, table=t)
    with pytest.raises(ps.InvalidArgument, match="already declared"):
        Embedding(3, table=t, optimizer="sgd")
    with pytest.raises(ps.DTypeError, match="float32 or float64"):
        Embedding(3, table=w.table("t_int", width=3, dtype="int32"))
    with pytest.raises(ps.InvalidArgument, match="per_sample_weights need mode='sum'"):
        EmbeddingBag(3, table=t, mode="mean")(torch.tensor([[1]]), per_sample_weights=torch.ones(1, 1))
    with pytest.raises(ps.InvalidArgument, match="mode must be"):
        EmbeddingBag(3, table=t, mode="median")
    with pytest.raises(ps.InvalidArgument, match="embedding_dim"):
        Embedding(0, table="t_zero", worker=w)


def test_export_whole_table_and_delta_to_torch_safetensors_and_numpy(w: Any, tmp_path: Any) -> None:
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file as load_torch

    from paramserver.torch import export_table

    emb = Embedding(3, table="t_export", worker=w, optimizer="sum", init="zeros", ttl=100)
    ids_a = torch.tensor([7, 2**40, 3])
    emb(ids_a).sum().backward()  # iteration 0: rows 3, 7, 2**40 become 1
    emb.flush()
    w.advance()
    emb(torch.tensor([3, 11])).sum().backward()  # iteration 1: 3 becomes 2, 11 is new
    emb.flush()
    ids = np.array([3, 7, 11, 2**40], dtype=np.int64)
    full = np.array([[2] * 3, [1] * 3, [1] * 3, [1] * 3], dtype=np.float32)
    for suffix in ("safetensors", "pt", "npz"):
        assert export_table(emb.table, tmp_path / f"all.{suffix}") == 4
        assert export_table(emb.table, tmp_path / f"delta.{suffix}", since=0) == 2
    st = load_torch(str(tmp_path / "all.safetensors"))
    assert st["ids"].dtype == torch.int64 and st["weight"].dtype == torch.float32
    np.testing.assert_array_equal(st["ids"].numpy(), ids)
    np.testing.assert_array_equal(st["weight"].numpy(), full)
    np.testing.assert_array_equal(load_np(str(tmp_path / "delta.safetensors"))["ids"], [3, 11])
    pt = torch.load(tmp_path / "all.pt", weights_only=True)
    np.testing.assert_array_equal(pt["ids"].numpy(), ids)
    np.testing.assert_array_equal(pt["weight"].numpy(), full)
    with np.load(tmp_path / "delta.npz") as z:
        np.testing.assert_array_equal(z["ids"], [3, 11])
        np.testing.assert_array_equal(z["weight"], full[[0, 2]])
    served = torch.nn.Embedding.from_pretrained(st["weight"])  # what a serving process does with it
    np.testing.assert_array_equal(served(torch.tensor([1])).numpy(), full[[1]])
    with pytest.raises(ps.InvalidArgument, match="must end in one of"):
        export_table(emb.table, tmp_path / "x.csv")
    plain = Embedding(3, table="t_export_plain", worker=w)
    with pytest.raises(ps.InvalidArgument, match="needs a table declared with ttl="):
        export_table(plain.table, tmp_path / "d.npz", since=0)


def test_dense_parameters_follow_torch_adagrad(w: Any) -> None:
    from paramserver.torch import DenseParameters

    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    ref = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    ref.load_state_dict(net.state_dict())
    dense = DenseParameters(net.parameters(), table="t_dense", worker=w, optimizer=ps.AdaGrad(lr=0.1), width=16)
    assert dense.rows == 3  # 46 parameters in rows of 16
    opt = torch.optim.Adagrad(ref.parameters(), lr=0.1)
    rng = np.random.default_rng(2)
    for _ in range(10):
        x = torch.from_numpy(rng.normal(size=(8, 7)).astype(np.float32))
        dense.pull()
        net.zero_grad()
        net(x).square().mean().backward()
        dense.push()
        opt.zero_grad()
        ref(x).square().mean().backward()
        opt.step()
    dense.flush()
    dense.pull()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        assert float((a - b).abs().max().detach()) < TOL
    with pytest.raises(ps.InvalidArgument, match="at least one parameter"):
        DenseParameters([], table="t_dense_none", worker=w)
