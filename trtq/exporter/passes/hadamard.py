"""Hadamard matrices of order K·2^m from small verified factors, and random signed orthogonal rotations.

A Hadamard matrix ``H`` of order ``n`` has entries ±1 and ``H·Hᵀ = n·I``, so ``H/√n`` is orthogonal.

- Sylvester, ``n = 2^m``: ``H[i, j] = (−1)^popcount(i & j)`` (``H_{2k} = [[H_k, H_k], [H_k, −H_k]]``).
- Paley I, prime ``q ≡ 3 (mod 4)``, order ``q + 1`` (12 from q = 11, 20 from q = 19): with the
  Jacobsthal matrix ``Q[i, j] = χ(j − i)`` (``χ`` the Legendre symbol mod ``q``, skew since
  ``χ(−1) = −1``) and ``S = [[0, 1ᵀ], [−1, Q]]``, ``H = I + S``.
- Paley II, prime ``q ≡ 1 (mod 4)``, order ``2(q + 1)`` (28 from q = 13, 36 from q = 17): with the
  symmetric conference matrix ``C = [[0, 1ᵀ], [1, Q]]``,
  ``H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]]``.
- Kronecker: ``(A ⊗ B)(A ⊗ B)ᵀ = A·Aᵀ ⊗ B·Bᵀ = ab·I``, so ``H_K ⊗ H_{2^m}`` is a Hadamard matrix of
  order ``K·2^m`` (e.g. 384 = 12·32, 1536 = 12·128). ``H_K`` is not symmetric: whoever applies ``T``
  to an activation must apply ``Tᵀ`` (never ``T``) to the weight that follows.

Every matrix is checked in integer arithmetic (``H·Hᵀ = n·I``) when it is built.

Random rotations: ``R = diag(s)·H/√n`` with ``s ∈ {±1}^n`` drawn from the caller's generator, so
``R·Rᵀ = diag(s)·H·Hᵀ·diag(s)/n = I``; where no Hadamard matrix of order ``n`` is known here, a Haar
random orthogonal matrix (QR of a Gaussian matrix, the signs of ``diag(R)`` folded into ``Q``).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

__all__ = [
    "MAX_PALEY_ORDER",
    "hadamard",
    "hadamard_base",
    "has_hadamard",
    "kronecker_split",
    "random_orthogonal",
    "random_rotation",
    "random_signs",
    "signed_hadamard",
    "signs_hex",
]

logger = logging.getLogger(__name__)

# The largest non-power-of-two Paley factor searched for; larger orders use a random orthogonal matrix.
MAX_PALEY_ORDER = 256


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % p for p in range(2, int(q**0.5) + 1))


def _legendre(q: int) -> np.ndarray:
    """``χ(a)`` for ``a = 0 … q−1``: 0 at 0, +1 on quadratic residues mod prime ``q``, −1 elsewhere."""
    chi = -np.ones(q, dtype=np.int64)
    chi[0] = 0
    chi[np.unique((np.arange(1, q) ** 2) % q)] = 1
    return chi


def _jacobsthal(q: int) -> np.ndarray:
    idx = np.arange(q)
    return _legendre(q)[(idx[None, :] - idx[:, None]) % q]


def _paley1(q: int) -> np.ndarray:
    """Paley construction I, order ``q + 1`` (prime ``q ≡ 3 mod 4``)."""
    n = q + 1
    s = np.zeros((n, n), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return np.eye(n, dtype=np.int64) + s


def _paley2(q: int) -> np.ndarray:
    """Paley construction II, order ``2(q + 1)`` (prime ``q ≡ 1 mod 4``)."""
    n = q + 1
    c = np.zeros((n, n), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    plus = np.array([[1, 1], [1, -1]])
    minus = np.array([[1, -1], [-1, -1]])
    return np.kron(c, plus) + np.kron(np.eye(n, dtype=np.int64), minus)


def _sylvester(n: int) -> np.ndarray:
    idx = np.arange(n)
    bits = np.bitwise_and(idx[:, None], idx[None, :])
    parity = np.zeros_like(bits)
    while np.any(bits):
        parity ^= bits & 1
        bits >>= 1
    return 1 - 2 * parity


@functools.cache
def _paley_orders() -> dict[int, tuple[str, int]]:
    """Order ``K`` -> (construction, q) for every Paley order up to `MAX_PALEY_ORDER` that is not 2^m."""
    orders: dict[int, tuple[str, int]] = {}
    primes = [q for q in range(3, MAX_PALEY_ORDER) if _is_prime(q)]
    candidates = [(q + 1, "paley1", q) for q in primes if q % 4 == 3]
    candidates += [(2 * (q + 1), "paley2", q) for q in primes if q % 4 == 1]
    for order, kind, q in candidates:  # Paley I first: 12 comes from q = 11 (skew), not q = 5
        if order <= MAX_PALEY_ORDER and order & (order - 1) and order not in orders:
            orders[order] = (kind, q)
    return orders


def _odd_part(n: int) -> int:
    while n % 2 == 0:
        n //= 2
    return n


def hadamard_base(n: int) -> int | None:
    """The factor ``K`` of ``n = K·2^m`` that `hadamard` builds ``H_n`` from (1: Sylvester alone).

    Among the known orders ``K`` (Paley I/II up to `MAX_PALEY_ORDER`) whose odd part is ``n``'s, the
    smallest that divides ``n``: 1536 -> 12, 384 -> 12, 1280 -> 20, 128 -> 1.

    Returns:
        ``K``, or None when no Hadamard matrix of order ``n`` is known here.
    """
    if n < 1:
        return None
    odd = _odd_part(n)
    if odd == 1:
        return 1
    fits = [k for k in _paley_orders() if _odd_part(k) == odd and n % k == 0]
    return min(fits) if fits else None


def has_hadamard(n: int) -> bool:
    """Whether `hadamard` can build a Hadamard matrix of order ``n``."""
    return hadamard_base(n) is not None


@functools.cache
def _hadamard_int(n: int) -> np.ndarray:
    base = hadamard_base(n)
    if base is None:
        raise ValueError(f"no Hadamard matrix of order {n} is known here (n = K·2^m, K a Paley order)")
    if base == 1:
        h = _sylvester(n)
    else:
        kind, q = _paley_orders()[base]
        factor = _paley1(q) if kind == "paley1" else _paley2(q)
        _verify(factor, f"{kind}(q={q})")
        h = np.kron(factor, _sylvester(n // base))
    _verify(h, f"H_{n}")
    h.setflags(write=False)
    return h


def _verify(h: np.ndarray, what: str) -> None:
    n = h.shape[0]
    if h.shape != (n, n) or not np.array_equal(np.abs(h), np.ones_like(h)) or not np.array_equal(
        h @ h.T, n * np.eye(n, dtype=h.dtype)
    ):
        raise RuntimeError(f"internal error: {what} is not a Hadamard matrix")


def hadamard(n: int) -> np.ndarray:
    """The ±1 Hadamard matrix ``H_K ⊗ H_{2^m}`` of order ``n = K·2^m`` (float64, not normalised).

    Raises:
        ValueError: no Hadamard matrix of order ``n`` is known here (see `has_hadamard`).
    """
    return _hadamard_int(n).astype(np.float64)


def random_signs(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent ±1 signs (float64) drawn from `rng`."""
    return np.where(rng.integers(0, 2, size=n) == 1, -1.0, 1.0)


def signed_hadamard(n: int, signs: np.ndarray) -> np.ndarray:
    """The orthogonal ``diag(signs)·H_n/√n``: row ``i`` of ``H_n/√n`` times ``signs[i]``."""
    return signs[:, None] * hadamard(n) / np.sqrt(n)


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal ``n×n`` matrix (float64) drawn from `rng`."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


def random_rotation(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, object]]:
    """A random orthogonal ``n×n`` rotation: signed Hadamard when one of order ``n`` exists, else Haar.

    Returns:
        (the float64 matrix, a JSON-able record: ``{"kind": "hadamard", "size", "factors": [K, 2^m],
        "signs": hex}`` or ``{"kind": "random_orthogonal", "size"}``).
    """
    base = hadamard_base(n)
    if base is None:
        return random_orthogonal(n, rng), {"kind": "random_orthogonal", "size": n}
    signs = random_signs(n, rng)
    factors = [base, n // base] if base > 1 else [n]
    record = {"kind": "hadamard", "size": n, "factors": factors, "signs": signs_hex(signs)}
    return signed_hadamard(n, signs), record


def kronecker_split(n: int) -> tuple[int, int] | None:
    """``(a, b)`` with ``a·b = n``, Hadamard matrices of both orders known, ``a ≥ b``, ``a + b`` least.

    ``x·(H_a ⊗ H_b)`` costs ``n·(a + b)`` multiply-adds instead of ``n²``: 1536 -> (48, 32),
    384 -> (24, 16). None when ``n`` has no Hadamard matrix here.
    """
    if not has_hadamard(n):
        return None
    best: tuple[int, int] | None = None
    for b in range(1, int(n**0.5) + 1):
        if n % b == 0 and has_hadamard(b) and has_hadamard(n // b) and (best is None or n // b + b < sum(best)):
            best = (n // b, b)
    return best


def signs_hex(signs: np.ndarray) -> str:
    """Signs as a hex string, bit ``i`` (most significant first) set where ``signs[i] < 0``."""
    bits = (np.asarray(signs) < 0).astype(np.uint8)
    return np.packbits(bits).tobytes().hex()
