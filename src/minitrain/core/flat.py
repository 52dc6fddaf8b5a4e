"""All of an optimizer's per-coordinate state in one tensor, with a view shaped like each
parameter: the optimizer's equations run on the whole tensor as one op each."""

from __future__ import annotations

import torch


class Flat:
    """All the parameters' coordinates in one tensor (`data`) and a view of it shaped like each
    parameter (`views`, in parameter order): the elementwise equations run on `data` as one
    op, per-parameter code (weight decay, observers, checkpoints) uses the views.

    Parameters of one size lie side by side in `data` (sizes in the order they first come),
    so that `norms` and `maxes` take all of a size at once, one op over a (count, size)
    matrix. On the CPU torch reduces each row of a matrix alone, so a row's norm has the bits
    of the tensor's own norm; CUDA's kernels sum in other orders, and there the two agree to
    rounding, not bit for bit."""

    def __init__(self, params: list[torch.Tensor]):
        p0 = params[0]
        if any(p.dtype != p0.dtype or p.device != p0.device for p in params):
            raise ValueError("a flat tensor of the parameters needs one dtype and device")
        sizes = [p.numel() for p in params]
        first = {}
        for i, n in enumerate(sizes):
            first.setdefault(n, i)
        self.order = sorted(range(len(params)), key=lambda i: (first[sizes[i]], i))  # in data
        self.data = torch.zeros(sum(sizes), dtype=p0.dtype, device=p0.device)
        self.views = [None] * len(params)
        rank = [0] * len(params)  # each parameter's place in data's order
        blocks, start = [], 0  # [start, size, count] per size, in data's order
        for pos, (i, chunk) in enumerate(
                zip(self.order, self.data.split([sizes[i] for i in self.order]))):
            self.views[i], rank[i] = chunk.view_as(params[i]), pos
            if not blocks or blocks[-1][1] != sizes[i]:
                blocks.append([start, sizes[i], 0])
            blocks[-1][2] += 1
            start += sizes[i]
        self._layout = blocks
        self._blocks = self._split(self.data)
        self._rank = torch.tensor(rank, device=p0.device)

    def _split(self, data: torch.Tensor) -> list[torch.Tensor]:
        return [data[a:a + n * count].view(count, n) for a, n, count in self._layout]

    def fill(self, tensors: list[torch.Tensor]) -> None:
        """data = the tensors (one per parameter, in parameter order), flattened."""
        torch.cat([tensors[i].reshape(-1) for i in self.order], out=self.data)

    def norms(self, data: torch.Tensor | None = None) -> torch.Tensor:
        """Each view's L2 norm, in parameter order (on the CPU, the bits of
        torch._foreach_norm); of `data`, a copy of `self.data`, when given."""
        blocks = self._blocks if data is None else self._split(data)
        return torch.cat([torch.linalg.vector_norm(b, dim=1) for b in blocks])[self._rank]

    def maxes(self, data: torch.Tensor | None = None) -> torch.Tensor:
        """Each view's largest entry, in parameter order (of `data` when given)."""
        blocks = self._blocks if data is None else self._split(data)
        return torch.cat([b.amax(dim=1) for b in blocks])[self._rank]

    def view_of(self, data: torch.Tensor, i: int) -> torch.Tensor:
        """Parameter i's view of `data`, a copy of `self.data`."""
        v = self.views[i]
        return data[v.storage_offset() - self.data.storage_offset():][:v.numel()].view_as(v)
