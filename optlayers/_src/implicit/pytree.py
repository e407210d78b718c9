"""Minimal pytrees: nested tuples, lists, dicts and namedtuples of leaves.

A *pytree* is a leaf (a tensor or any other object) or a container of pytrees. Containers are
``tuple``, ``list``, ``dict`` (keys kept in insertion order) and namedtuples; ``None`` is an
empty container (it has no leaves), as in JAX, so optional parts of a solution (e.g. the
multipliers of absent equality constraints) can be ``None``.

``flatten(tree) -> (leaves, treedef)`` and ``treedef.unflatten(leaves)`` are inverse. This is a
deliberately small, dependency-free version of ``jax.tree_util`` (torch's own pytree module is
private API).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class TreeDef:
    """Structure of a pytree. ``kind`` is "leaf", "none", "tuple", "list", "dict" or
    "namedtuple"; ``meta`` holds the dict keys or the namedtuple class."""

    kind: str
    meta: Any
    children: tuple["TreeDef", ...]
    num_leaves: int

    def unflatten(self, leaves: Sequence[Any]) -> Any:
        leaves = list(leaves)
        if len(leaves) != self.num_leaves:
            raise ValueError(
                f"pytree unflatten: the structure has {self.num_leaves} leaves, got {len(leaves)}"
            )
        it = iter(leaves)
        return self._build(it)

    def _build(self, it):
        if self.kind == "leaf":
            return next(it)
        if self.kind == "none":
            return None
        items = [c._build(it) for c in self.children]
        if self.kind == "tuple":
            return tuple(items)
        if self.kind == "list":
            return items
        if self.kind == "dict":
            return dict(zip(self.meta, items))
        return self.meta(*items)  # namedtuple

    def __str__(self) -> str:
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        inner = ", ".join(str(c) for c in self.children)
        if self.kind == "tuple":
            return f"({inner}{',' if len(self.children) == 1 else ''})"
        if self.kind == "list":
            return f"[{inner}]"
        if self.kind == "dict":
            return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(self.meta, self.children)) + "}"
        return f"{self.meta.__name__}({inner})"


_LEAF = TreeDef("leaf", None, (), 1)
_NONE = TreeDef("none", None, (), 0)


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def flatten(tree: Any) -> tuple[list[Any], TreeDef]:
    """Leaves of ``tree`` in a fixed order (depth first) and its structure."""
    leaves: list[Any] = []
    treedef = _flatten_into(tree, leaves)
    return leaves, treedef


def _flatten_into(tree, leaves) -> TreeDef:
    if tree is None:
        return _NONE
    if _is_namedtuple(tree):
        kind, meta, items = "namedtuple", type(tree), list(tree)
    elif isinstance(tree, tuple):
        kind, meta, items = "tuple", None, list(tree)
    elif isinstance(tree, list):
        kind, meta, items = "list", None, tree
    elif isinstance(tree, dict):
        kind, meta, items = "dict", tuple(tree.keys()), list(tree.values())
    else:
        leaves.append(tree)
        return _LEAF
    children = tuple(_flatten_into(t, leaves) for t in items)
    return TreeDef(kind, meta, children, sum(c.num_leaves for c in children))


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise to ``tree`` and trees of the same structure ``rest``."""
    leaves, treedef = flatten(tree)
    others = []
    for k, other in enumerate(rest):
        o_leaves, o_def = flatten(other)
        if o_def != treedef:
            raise ValueError(
                f"tree_map: argument {k + 1} has structure {o_def}, expected {treedef}"
            )
        others.append(o_leaves)
    return treedef.unflatten([fn(*xs) for xs in zip(leaves, *others)])


def tree_sub(a: Any, b: Any) -> Any:
    """Leafwise ``a - b``."""
    return tree_map(lambda x, y: x - y, a, b)


def describe_leaves(leaves: Iterable[Any]) -> str:
    """Short description of tensor leaves (shapes), for error messages."""
    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append(f"Tensor{tuple(leaf.shape)}")
        else:
            parts.append(type(leaf).__name__)
    return "[" + ", ".join(parts) + "]"


def flatten_up_to(treedef: TreeDef, tree: Any, what: str = "tree") -> list[Any]:
    """Leaves of ``tree`` following the structure ``treedef``.

    ``None`` anywhere in ``tree`` stands for "None for every leaf below" (e.g. a missing
    tangent for a whole argument); otherwise ``tree`` must have the structure of ``treedef``.
    """
    out: list[Any] = []
    _flatten_up_to(treedef, tree, out, what)
    return out


def _flatten_up_to(treedef: TreeDef, tree, out, what):
    if tree is None:
        out.extend([None] * treedef.num_leaves)
        return
    if treedef.kind == "leaf":
        out.append(tree)
        return
    if treedef.kind == "none":
        raise ValueError(f"{what}: expected None, got {type(tree).__name__}")
    if treedef.kind == "dict":
        if not isinstance(tree, dict) or set(tree) != set(treedef.meta):
            raise ValueError(f"{what}: expected a dict with keys {list(treedef.meta)}")
        items = [tree[k] for k in treedef.meta]
    else:
        if not isinstance(tree, (tuple, list)) or len(tree) != len(treedef.children):
            raise ValueError(
                f"{what}: expected a sequence of length {len(treedef.children)} matching {treedef}, "
                f"got {type(tree).__name__}"
            )
        items = list(tree)
    for child, item in zip(treedef.children, items):
        _flatten_up_to(child, item, out, what)
