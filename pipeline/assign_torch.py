"""Tree descent with torch, for `dgamix cluster --device cuda` (faiss-cpu has no GPU kernels).

:class:`TorchTree` computes what :meth:`dgamix.pipeline.kmeans.Tree.descend` computes (nearest centroid
by inner product among the children of each row's parent; ties to the lower domain id) on any
torch device. Per level the children of every parent are laid out as one padded index table
(parents x widest branching), so a chunk of rows is one gather and one batched product instead
of one small product per parent. Float32 throughout; on a GPU the products may be summed in
another order than numpy's, so a row whose two best centroids are within rounding of each other
can land in the other one (the tests ask >= 99% same leaf). The fit stays on the CPU.
"""
from __future__ import annotations

import numpy as np

from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.engine import require_device
from dgamix.pipeline.kmeans import Tree

CHUNK_BYTES = 256 << 20  # gathered candidate centroids per chunk of rows (rows x widest x dim x 4)


class TorchTree:
    """A :class:`Tree`'s centroids on a torch ``device`` (e.g. "cuda", "cuda:1", "cpu")."""

    def __init__(self, tree: Tree, device: str = "cuda"):
        import torch

        require_device(device)
        self.tree, self.device = tree, torch.device(device)
        self.domain = [torch.from_numpy(np.ascontiguousarray(d)).to(self.device) for d in tree.domain]
        self.centroids = []   # per level; from level 2 on with one extra zero row (the padding target)
        self.children = [None]  # per level >= 2: (parents of level - 1, widest) row indices, padding = last row
        for i in range(tree.depth):
            cent = torch.from_numpy(np.ascontiguousarray(tree.centroids[i], np.float32)).to(self.device)
            if i == 0:
                self.centroids.append(cent)
                continue
            prev, par = tree.domain[i - 1], tree.parent[i]
            lo, hi = np.searchsorted(par, prev, "left"), np.searchsorted(par, prev, "right")
            if np.any(hi == lo):
                raise DgamixError(f"domain {prev[hi == lo][0]} of level {i} has no children in the tree; the tree "
                                  f"file is inconsistent: rerun `dgamix cluster` with --overwrite.")
            width = int((hi - lo).max())
            m = len(par)
            table = lo[:, None] + np.arange(width)[None, :]
            table[table >= hi[:, None]] = m  # padding: the zero row, masked to -inf below
            self.children.append(torch.from_numpy(table.astype(np.int64)).to(self.device))
            self.centroids.append(torch.cat([cent, torch.zeros(1, cent.shape[1], device=self.device)]))

    def descend(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`Tree.descend`: (domain ids int64 (n, L), similarities float32 (n, L))."""
        import torch

        x = np.ascontiguousarray(x, dtype=np.float32)
        n, depth = len(x), self.tree.depth
        labels = np.empty((n, depth), np.int64)
        sims = np.empty((n, depth), np.float32)
        widest = max([1] + [int(c.shape[1]) for c in self.children[1:]])
        rows = max(1, CHUNK_BYTES // (4 * widest * max(1, x.shape[1])))
        with torch.inference_mode():
            for a in range(0, n, rows):
                xt = torch.from_numpy(x[a:a + rows]).to(self.device)
                ar = torch.arange(len(xt), device=self.device)
                s = xt @ self.centroids[0].T
                best, row = s.max(dim=1)  # first maximum: the lower domain id on ties
                out_l, out_s = [self.domain[0][row]], [best]
                for i in range(1, depth):
                    kids = self.children[i][row]                           # (c, width) rows of level i + 1
                    s = torch.einsum("cd,ckd->ck", xt, self.centroids[i][kids])
                    s = s.masked_fill(kids == len(self.domain[i]), float("-inf"))
                    best, j = s.max(dim=1)
                    row = kids[ar, j]
                    out_l.append(self.domain[i][row])
                    out_s.append(best)
                labels[a:a + rows] = torch.stack(out_l, 1).cpu().numpy()
                sims[a:a + rows] = torch.stack(out_s, 1).float().cpu().numpy()
        return labels, sims
