"""Host-side caches of the ops: the placeholders of a side that is not rotated (zero coordinates, the identity
table), so that no call allocates them, and the PyTorch path's rotation factors, computed once per forward for the
layers that rotate by the same coordinates."""
from __future__ import annotations

import collections
import weakref

import torch

from . import reference
from .rope import RopeTable

# Placeholders of the sides that are not rotated, cached per device so that no call allocates them.  Under
# torch.compile they are built in the graph instead (the compiled graph owns its constants).
_PLACEHOLDERS: dict = {}


def _cached(key, build):
    if torch.compiler.is_compiling():
        return build()
    value = _PLACEHOLDERS.get(key)
    if value is None:
        value = _PLACEHOLDERS[key] = build()
    return value


def _zero_coords(tokens: int, device) -> torch.Tensor:
    """float32 ``[1, tokens, 1]`` zeros (a token that is not rotated): a zero-stride view of one cached zero."""
    return _cached(("zero", device), lambda: torch.zeros((1, 1, 1), device=device)).expand(1, tokens, 1)


def _identity_table(head_dim: int, device) -> RopeTable:
    """:meth:`RopeTable.identity` for ``head_dim``, cached per ``(head_dim, device)``."""
    return _cached(("identity", head_dim, device), lambda: RopeTable.identity(head_dim, device))


def _is_identity(freqs: torch.Tensor) -> bool:
    """Whether ``freqs`` are those of the cached identity table (checked by identity: no value read)."""
    identity = _PLACEHOLDERS.get(("identity", 2 * freqs.shape[1], freqs.device))
    return identity is not None and freqs is identity.freqs


class _RotationCache:
    """Rotation factors of the PyTorch path (:func:`~baton_fast.reference.rotation_factors`) for the coordinates of
    the last few calls.  The layers of a forward rotate by the same coordinate tensors (and q and k of a
    self-attention by the same ones), so the CPU path computes their factors once per forward, as diffusers does
    its cos/sin.  An entry is reused only while its coordinate and table tensors are alive and unchanged (same
    objects, same version counters); inference-mode tensors, which have no version counter, are not cached.
    Entries of dead coordinates are dropped at the next miss."""

    SIZE = 8

    def __init__(self):
        self._entries = collections.OrderedDict()

    def get(self, coords, freqs, axes, interleaved: bool, dtype):
        """:func:`~baton_fast.reference.rotation_factors` of ``coords`` under the table ``(freqs, axes, interleaved)``
        for ``dtype``."""
        def compute():
            return reference.rotation_factors(coords, RopeTable.trusted(freqs, axes, interleaved, coords.shape[2]),
                                              dtype)

        try:
            key = (id(coords), coords._version, id(freqs), freqs._version, id(axes), axes._version, interleaved, dtype)
        except RuntimeError:  # inference tensor
            return compute()
        entry = self._entries.get(key)
        if entry is not None and all(ref() is t for ref, t in zip(entry[0], (coords, freqs, axes))):
            self._entries.move_to_end(key)
            return entry[1]
        for stale in [k for k, (refs, _) in self._entries.items() if any(ref() is None for ref in refs)]:
            del self._entries[stale]
        value = compute()
        self._entries[key] = (tuple(weakref.ref(t) for t in (coords, freqs, axes)), value)
        if len(self._entries) > self.SIZE:
            self._entries.popitem(last=False)
        return value


_ROTATIONS = _RotationCache()
