r"""Skew-symmetric multiplicative noise families.

A noise is a linear map x ↦ G(x) ∈ R^{d×K} whose column k is G^k x, with every G^k skew-symmetric
(assumption A1) and rank G(x) = d − 1 for almost every x (A2). It drives the Stratonovich SDE
dx = √β G(x) ∘ dB, which only rotates x: |x_s| = |x_0|.

Every noise provides, batched over leading axes:

- ``apply(x, xi)``            G(x) ξ
- ``apply_transpose(x, v)``   G(x)ᵀ v
- ``diffusion(x, v)``         Σ(x) v = G(x) G(x)ᵀ v
- ``diffusion_diagonal(x)``   the diagonal of Σ(x), Σ_k (G^k x)_i²: where the noise moves x
- ``ito_drift(x)``            L x with L = ½ Σ_k G^k G^k (the Itô correction)
- ``rotation_step(u, xi, noise_dt, g, drift_dt)``  one norm-preserving integrator step (below)
- ``mixing_rate()``           slowest relaxation rate of the direction's first two moments per unit
  of τ = ∫β, used by :func:`msgm_pp.schedule.mixing_schedule`.

``rotation_step`` applies a rotation R ≈ exp(Ω), Ω = Σ_k θ_k G^k, to a unit direction u with
θ = drift_dt · G(u)ᵀ g + √noise_dt · ξ and ξ ~ N(0, I) of shape ``increment_shape``. With g = None
this is the forward SDE; drift_dt = noise_dt = βh with g the tangential score gives the reverse SDE,
and noise_dt = 0, drift_dt = βh/2 the probability-flow ODE. R is an exact rotation, so the norm is
preserved by construction, not by projection.
"""

import abc
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from msgm_pp._checks import check_dim, check_key, describe_indices
from msgm_pp.serialization import config_int, config_shape, serializable
from msgm_pp.sphere import project_tangent, sphere_exp

# The contractions are exact rotations' building blocks: TF32 (the default on some GPUs) would
# break skew-symmetry and norm preservation at the 1e-4 level, so they run in full precision.
_FULL = jax.lax.Precision.HIGHEST


def _batched(signature: str):
    """Broadcast a single-point method over leading batch axes."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args):
            return jnp.vectorize(functools.partial(method, self), signature=signature)(*args)

        return wrapper

    return decorate


class AbstractNoise(eqx.Module):
    """Interface of a skew-symmetric noise on R^d; see the module docstring."""

    dim: eqx.AbstractVar[int]

    @property
    @abc.abstractmethod
    def num_generators(self) -> int:
        """K, the number of skew-symmetric generators G^k."""

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one point: (d,) for vectors, the field's shape for a lattice."""
        return (self.dim,)

    @property
    def increment_shape(self) -> tuple[int, ...]:
        """Shape of the standard normal increment ξ consumed by `rotation_step`."""
        return (self.num_generators,)

    @abc.abstractmethod
    def _apply(self, x, xi): ...

    @abc.abstractmethod
    def _apply_transpose(self, x, v): ...

    @abc.abstractmethod
    def _ito_drift(self, x): ...

    @abc.abstractmethod
    def rotation_step(self, u, xi, noise_dt, g=None, drift_dt=0.0):
        """One norm-preserving step for a single unit direction u of shape (d,)."""

    @abc.abstractmethod
    def mixing_rate(self) -> float:
        """Slowest decay rate of E[u] and E[u uᵀ] − I/d per unit of τ = ∫β."""

    @abc.abstractmethod
    def trace_ito(self):
        """tr L = −½ Σ_k |G^k|²_F. A unit direction spreads as E|u_τ − u_0|² ≈ −2 tr(L) τ / d on
        average over u_0."""

    def _diffusion(self, x, v):
        return self._apply(x, self._apply_transpose(x, v))

    def _diffusion_diagonal(self, x):
        basis = jnp.eye(self.num_generators, dtype=x.dtype)
        columns = jax.vmap(lambda xi: self._apply(x, xi))(basis)
        return jnp.sum(columns**2, axis=0)

    def displacement(self, u, xi):
        """The tangent vector by which `rotation_step(u, ξ, dt)` moves u, per √dt, to first
        order: G(u) ξ."""
        return self._apply(u, xi)

    def drift_coordinates(self, u, g):
        """The increment coordinates that a drift g adds per unit of time in `rotation_step`:
        G(u)ᵀ g, so that rotation_step(u, ξ + √dt c, dt) = rotation_step(u, ξ, dt, g, dt)."""
        return self._apply_transpose(u, g)

    @_batched("(d),(k)->(d)")
    def apply(self, x, xi):
        """G(x) ξ."""
        return self._apply(x, xi)

    @_batched("(d),(d)->(k)")
    def apply_transpose(self, x, v):
        """G(x)ᵀ v, the coordinates (G^k x) · v."""
        return self._apply_transpose(x, v)

    @_batched("(d),(d)->(d)")
    def diffusion(self, x, v):
        """Σ(x) v = G(x) G(x)ᵀ v."""
        return self._diffusion(x, v)

    @_batched("(d)->(d)")
    def diffusion_diagonal(self, x):
        """diag Σ(x) = Σ_k (G^k x)², the variance that a step of the noise adds to each
        coordinate per unit of τ; it sums to −2 xᵀ L x."""
        return self._diffusion_diagonal(x)

    @_batched("(d)->(d)")
    def ito_drift(self, x):
        """L x, the Itô drift of dx = G(x) ∘ dB per unit of τ."""
        return self._ito_drift(x)


@serializable
class IsotropicNoise(AbstractNoise):
    r"""The full so(d) basis G^{(ij)} = e_i e_jᵀ − e_j e_iᵀ, i < j, never stored.

    K = d(d−1)/2, Σ(x) = |x|² I − x xᵀ and L = −(d−1)/2 I: the direction is Brownian motion on
    S^{d−1} with generator ½ β Δ_S. Generators are ordered as `numpy.triu_indices(d, 1)`.
    A step costs O(d): the increment is a tangent Gaussian and the rotation is a geodesic step
    u ← cos|v| u + sin|v| v/|v| with v = drift_dt P g + √noise_dt P ξ, P = I − u uᵀ, which has the
    law of exp(Ω) u to the order that matters (the Itô correction of this noise is radial).
    """

    dim: int = eqx.field(static=True)

    def __init__(self, dim: int):
        self.dim = check_dim(dim, "dim")

    def config(self) -> dict:
        return {"dim": self.dim}

    @classmethod
    def from_config(cls, config: dict) -> "IsotropicNoise":
        return cls(config_int(config, "dim", 2**20))

    @property
    def num_generators(self) -> int:
        return self.dim * (self.dim - 1) // 2

    @property
    def increment_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def _skew_from_coordinates(self, xi):
        i, j = np.triu_indices(self.dim, 1)
        omega = jnp.zeros((self.dim, self.dim), xi.dtype).at[i, j].set(xi)
        return omega - omega.T

    def _apply(self, x, xi):
        return jnp.matmul(self._skew_from_coordinates(xi), x, precision=_FULL)

    def _apply_transpose(self, x, v):
        i, j = np.triu_indices(self.dim, 1)
        return v[i] * x[j] - v[j] * x[i]

    def _diffusion(self, x, v):
        return jnp.dot(x, x, precision=_FULL) * v - jnp.dot(x, v, precision=_FULL) * x

    def _diffusion_diagonal(self, x):
        return jnp.dot(x, x, precision=_FULL) - x**2

    def _ito_drift(self, x):
        return -0.5 * (self.dim - 1) * x

    def displacement(self, u, xi):
        """P_u ξ: the increment here is an ambient Gaussian vector."""
        return project_tangent(u, xi)

    def drift_coordinates(self, u, g):
        """P_u g: the increment here is a tangent vector, not generator coordinates."""
        return project_tangent(u, g)

    def rotation_step(self, u, xi, noise_dt, g=None, drift_dt=0.0):
        v = jnp.sqrt(noise_dt) * project_tangent(u, xi)
        if g is not None:
            v = v + drift_dt * self.drift_coordinates(u, g)
        return sphere_exp(u, v)

    def mixing_rate(self) -> float:
        return 0.5 * (self.dim - 1)

    def trace_ito(self):
        return -0.5 * self.dim * (self.dim - 1)


class AbstractTensorNoise(AbstractNoise):
    """A noise given by an explicit tensor `generators` of shape (d, d, K), G^k_{ij}.

    The step applies the Cayley rotation (I − Ω/2)⁻¹ (I + Ω/2) u. It is exactly orthogonal for skew
    Ω and equals exp(Ω) up to O(|Ω|³), so it has the same drift and covariance as the first-order
    Magnus step exp(Ω) u, at the cost of one d×d solve instead of a matrix exponential.
    """

    generators: eqx.AbstractVar[jax.Array]

    @property
    def dim(self) -> int:
        """d, the dimension of the rotated vectors."""
        return self.generators.shape[0]

    @property
    def num_generators(self) -> int:
        return self.generators.shape[2]

    def _apply(self, x, xi):
        return jnp.einsum("ijk,j,k->i", self.generators, x, xi, precision=_FULL)

    def _apply_transpose(self, x, v):
        return jnp.einsum("ijk,i,j->k", self.generators, v, x, precision=_FULL)

    def ito_matrix(self):
        """L = ½ Σ_k G^k G^k (symmetric, negative semi-definite)."""
        return 0.5 * jnp.einsum("ijk,jlk->il", self.generators, self.generators, precision=_FULL)

    def _ito_drift(self, x):
        return jnp.matmul(self.ito_matrix(), x, precision=_FULL)

    def rotation_step(self, u, xi, noise_dt, g=None, drift_dt=0.0):
        theta = jnp.sqrt(noise_dt) * xi
        if g is not None:
            theta = theta + drift_dt * self.drift_coordinates(u, g)
        half_omega = 0.5 * jnp.einsum("ijk,k->ij", self.generators, theta, precision=_FULL)
        eye = jnp.eye(self.dim, dtype=u.dtype)
        return jnp.linalg.solve(eye - half_omega, u + jnp.matmul(half_omega, u, precision=_FULL))

    def mixing_rate(self) -> float:
        return _tensor_mixing_rate(np.asarray(self.generators, dtype=np.float64))

    def trace_ito(self):
        return -0.5 * jnp.sum(self.generators**2)


_SECOND_MOMENT_MAX_DIM = 48


def _tensor_mixing_rate(generators: np.ndarray) -> float:
    """min(first-moment rate, second-moment rate) of the direction, computed from the tensor.

    E[u] evolves by L, and E[u uᵀ] by 𝓜(M) = LM + ML + Σ_k G^k M G^kᵀ, which is self-adjoint on
    symmetric matrices with 𝓜(I) = 0. The second-moment gap is computed for d <= 48 (an eigenvalue
    problem of size d(d+1)/2); above that only the first-moment rate is used.
    """
    d = generators.shape[0]
    ito = 0.5 * np.einsum("ijk,jlk->il", generators, generators)
    rate = float(np.linalg.eigvalsh(-ito).min())
    if d <= _SECOND_MOMENT_MAX_DIM:
        eye = np.eye(d)
        op = np.kron(ito, eye) + np.kron(eye, ito)
        op += np.einsum("ijk,lmk->iljm", generators, generators).reshape(d * d, d * d)
        basis = _symmetric_basis(d)
        eigenvalues = np.sort(np.linalg.eigvalsh(-(basis.T @ op @ basis)))
        rate = min(rate, float(eigenvalues[1]))
    return rate


def _symmetric_basis(d: int) -> np.ndarray:
    """Orthonormal basis of symmetric d×d matrices, as columns of vec(M) (row-major)."""
    columns = []
    for i in range(d):
        for j in range(i, d):
            m = np.zeros((d, d))
            if i == j:
                m[i, i] = 1.0
            else:
                m[i, j] = m[j, i] = 1.0 / math.sqrt(2.0)
            columns.append(m.ravel())
    return np.stack(columns, axis=1)


@serializable
class TensorNoise(AbstractTensorNoise):
    """A user-supplied tensor of shape (d, d, K), validated against A1 and A2.

    A1 is checked exactly (G^k_{ij} = −G^k_{ji} bit for bit); A2 numerically, by the singular values
    of G(x) at random points.
    """

    generators: jax.Array

    def __init__(self, generators):
        g = np.asarray(generators)
        if g.ndim != 3 or g.shape[0] != g.shape[1]:
            raise ValueError(f"`generators` must have shape (d, d, K), got {g.shape}.")
        if not np.issubdtype(g.dtype, np.floating):
            g = g.astype(float)
        d = g.shape[0]
        check_dim(d, "d (generators.shape[0])")
        if not np.isfinite(g).all():
            bad = np.flatnonzero(~np.isfinite(g).all(axis=(0, 1)))
            raise ValueError(
                f"`generators` has NaN or inf entries in generators k = {describe_indices(bad)}."
            )
        asymmetry = np.abs(g + g.transpose(1, 0, 2)).max(axis=(0, 1))
        if (asymmetry > 0).any():
            bad = np.flatnonzero(asymmetry > 0)
            raise ValueError(
                f"assumption A1 fails: generators k = {describe_indices(bad)} are not skew-symmetric "
                f"(max |G_ij + G_ji| = {asymmetry.max():.3g}). Use (F - F^T) / 2."
            )
        _check_rank_condition(g)
        self.generators = jnp.asarray(g)


def _check_rank_condition(g: np.ndarray, points: int = 8, rtol: float = 1e-7) -> None:
    d, _, k = g.shape
    if k < d - 1:
        raise ValueError(
            f"assumption A2 fails: rank G(x) = d - 1 = {d - 1} needs K >= d - 1 generators, got K = {k}."
        )
    rng = np.random.default_rng(0)
    for x in rng.standard_normal((points, d)):
        singular = np.linalg.svd(np.einsum("ijk,j->ik", g.astype(np.float64), x), compute_uv=False)
        rank = int((singular > rtol * singular[0]).sum()) if singular[0] > 0 else 0
        if rank < d - 1:
            raise ValueError(
                f"assumption A2 fails: rank G(x) = {rank} < d - 1 = {d - 1} at a random point x; "
                "the noise cannot mix the direction over the whole sphere."
            )


@serializable
class DenseNoise(AbstractTensorNoise):
    """The paper's dense noise: K = d, G^k = (F_k − F_kᵀ)/2 with F_k iid N(0, 1), scaled so that
    tr L = −d/2. Memory and cost per step are O(d³)."""

    generators: jax.Array

    def __init__(self, dim: int, *, key):
        dim = check_dim(dim, "dim")
        f = jax.random.normal(check_key(key), (dim, dim, dim))
        g = 0.5 * (f - jnp.swapaxes(f, 0, 1))
        trace_ito = -0.5 * jnp.sum(g**2)
        self.generators = g * jnp.sqrt((-0.5 * dim) / trace_ito)

    def config(self) -> dict:
        return {"dim": self.dim}

    @classmethod
    def from_config(cls, config: dict) -> "DenseNoise":
        return cls(config_int(config, "dim", 1024), key=jax.random.key(0))


@serializable
class LatticeNoise(AbstractNoise):
    r"""Nearest-neighbour rotations on a periodic ring (shape (n,)) or 2-D grid (shape (h, w)).

    One generator per edge (i, i + e_a): G^{(e)} = (e_i e_jᵀ − e_j e_iᵀ)/√2 with j = i + e_a, so
    K = d (ring) or 2d (grid) and L = −(deg/4) I with deg = 2 or 4. Memory and cost per step are
    O(d); nothing of size d×d is formed. Fields are flattened row-major to vectors of length d, and
    generator k = a·d + i is the edge leaving node i along axis a.

    A step is a Strang splitting over edge colour classes (the edges along one axis whose start
    coordinate has one parity; a third class closes an odd ring). Edges of a class are disjoint, so
    each class is applied as exact Givens rotations (in Cayley form) by θ_e/√2 + O(θ³), written with
    `jnp.roll`: no gathers, scatters or transcendentals in the hot loop.

    Commutators of neighbouring rotations generate so(d), so the direction mixes to uniform, but
    slowly: the energy profile E[u_i²] diffuses with generator −½(D − A) of the lattice graph, so the
    slowest mode decays at ½ λ₁(D − A) = 1 − cos(2π / n_max).
    """

    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape):
        shape = (shape,) if isinstance(shape, int | np.integer) else tuple(int(n) for n in shape)
        if len(shape) not in (1, 2):
            raise ValueError(f"LatticeNoise supports a 1-D ring or a 2-D grid, got shape {shape}.")
        if min(shape) < 3:
            raise ValueError(f"every side of the periodic lattice must be >= 3, got shape {shape}.")
        self.shape = shape

    @property
    def dim(self) -> int:
        """d = the number of lattice sites."""
        return math.prod(self.shape)

    def config(self) -> dict:
        return {"shape": list(self.shape)}

    @classmethod
    def from_config(cls, config: dict) -> "LatticeNoise":
        return cls(config_shape(config))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def num_generators(self) -> int:
        return len(self.shape) * self.dim

    @property
    def degree(self) -> int:
        """The number of neighbours of a site: 2 on a ring, 4 on a grid."""
        return 2 * len(self.shape)

    def _edge_fields(self, xi):
        return xi.reshape((len(self.shape), *self.shape)) / math.sqrt(2.0)

    def _apply(self, x, xi):
        x = x.reshape(self.shape)
        out = jnp.zeros_like(x)
        for axis, w in enumerate(self._edge_fields(xi)):
            out = out + w * jnp.roll(x, -1, axis) - jnp.roll(w * x, 1, axis)
        return out.ravel()

    def _apply_transpose(self, x, v):
        x, v = x.reshape(self.shape), v.reshape(self.shape)
        coordinates = [
            jnp.roll(x, -1, a) * v - x * jnp.roll(v, -1, a) for a in range(len(self.shape))
        ]
        return jnp.stack(coordinates).ravel() / math.sqrt(2.0)

    def _ito_drift(self, x):
        return -0.25 * self.degree * x

    def _diffusion_diagonal(self, x):
        energy = x.reshape(self.shape) ** 2
        neighbours = sum(
            jnp.roll(energy, shift, a) for a in range(len(self.shape)) for shift in (1, -1)
        )
        return 0.5 * neighbours.ravel()

    def rotation_step(self, u, xi, noise_dt, g=None, drift_dt=0.0):
        theta = jnp.sqrt(noise_dt) * xi
        if g is not None:
            theta = theta + drift_dt * self.drift_coordinates(u, g)
        phi = self._edge_fields(theta)
        u = u.reshape(self.shape)
        for axis, masks, fractions in _strang_sweep(self.shape):
            u = _rotate_along(u, phi[axis], axis, masks, fractions)
        return u.ravel()

    def trace_ito(self):
        return -0.25 * self.degree * self.dim

    def mixing_rate(self) -> float:
        laplacian_gap = 2.0 - 2.0 * math.cos(2.0 * math.pi / max(self.shape))
        return min(0.25 * self.degree, 0.5 * laplacian_gap)


@functools.lru_cache(maxsize=32)
def _strang_sweep(shape):
    """One Strang step as runs of class passes along one axis: [(axis, masks, fractions)].

    Classes 1..C−1 at half angle, class C at full angle, then 1..C−1 again in reverse order.
    """
    classes = _lattice_colour_classes(shape)
    passes = [(axis, mask, 0.5) for axis, mask in classes[:-1]]
    passes = [*passes, (*classes[-1], 1.0), *reversed(passes)]
    runs = []
    for axis, mask, fraction in passes:
        if runs and runs[-1][0] == axis:
            runs[-1][1].append(mask)
            runs[-1][2].append(fraction)
        else:
            runs.append((axis, [mask], [fraction]))
    return tuple((axis, np.stack(masks), np.array(fractions)) for axis, masks, fractions in runs)


def _rotate_along(u, phi, axis, masks, fractions):
    """Apply the class rotations of one run along `axis`, one class per scan iteration.

    Class edge (i, j = i + e_a) maps (u_i, u_j) to (c u_i + s u_j, c u_j − s u_i) with the Cayley
    form c = (1 − t²)/(1 + t²), s = 2t/(1 + t²), t = φ/2: an exact rotation by
    2 atan(φ/2) = φ + O(φ³), the same order as exp(φ G), without transcendentals. Within one class
    no node starts one edge and ends another, so the products below pick the one edge at each node.
    The scan also keeps XLA from fusing the chain of shifted reads into one kernel that recomputes
    every earlier pass.
    """

    def one_class(u, mask_and_fraction):
        mask, fraction = mask_and_fraction
        t = jnp.where(mask, (0.5 * fraction) * phi, 0.0)
        scale = 1.0 / (1.0 + t * t)
        cos_start, sin_start = (1.0 - t * t) * scale, 2.0 * t * scale
        cos_node = cos_start * jnp.roll(cos_start, 1, axis)
        shifted = sin_start * jnp.roll(u, -1, axis) - jnp.roll(sin_start * u, 1, axis)
        return cos_node * u + shifted, None

    return jax.lax.scan(one_class, u, (masks, fractions.astype(u.dtype)))[0]


@functools.lru_cache(maxsize=32)
def _lattice_colour_classes(shape: tuple[int, ...]) -> tuple[tuple[int, np.ndarray], ...]:
    """(axis, mask of start nodes) for each class of pairwise disjoint edges."""
    classes = []
    for axis, n in enumerate(shape):
        coordinate = np.arange(n).reshape([n if a == axis else 1 for a in range(len(shape))])
        paired = n - n % 2
        masks = [
            (coordinate % 2 == 0) & (coordinate < paired),
            (coordinate % 2 == 1) & (coordinate < paired),
        ]
        if n % 2:
            masks.append(coordinate == n - 1)
        classes.extend((axis, np.broadcast_to(m, shape)) for m in masks)
    return tuple(classes)
