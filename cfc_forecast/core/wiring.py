"""Sparse wirings of a CfC: Neural Circuit Policies (Lechner et al. 2020) and the fully connected wiring.

Lechner, Hasani, Amini, Henzinger, Rus, Grosu, "Neural circuit policies enabling auditable autonomy", Nature Machine
Intelligence 2, 642-652 (2020). An NCP is a four-layer circuit modelled on the nervous system of C. elegans:
sensory neurons (the inputs) -> inter neurons -> command neurons (recurrently connected) -> motor neurons (the
outputs), each synapse drawn at random with a fixed fan-out / fan-in per layer ("Wiring algorithm", Methods).

A :class:`Wiring` here is what a wired CfC computes with: the neurons per layer and, for each layer, which neurons of
the layer before (the inputs, for the first layer) each of its neurons reads. This is the semantics of ncps 1.0.1's
``WiredCfCCell``: a layer reads only the layer before it, every neuron reads every neuron of its own layer (ncps
replaces the within-layer adjacency, the NCP's recurrent command synapses included, by ones), and the synapses'
polarity is dropped (the masks are the absolute adjacency). :func:`auto_ncp` and :func:`ncp` draw the same synapses
as ncps's ``AutoNCP`` and ``NCP`` for the same seed; :func:`from_ncps` reads any ncps wiring object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from cfc_forecast.errors import UserError

WiringName = Literal["auto_ncp", "ncp", "fully_connected"]
NCP_KEYS = ("inter_neurons", "command_neurons", "motor_neurons", "sensory_fanout", "inter_fanout",
            "recurrent_command_synapses", "motor_fanin")  # fmt: skip


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare the masks
class Wiring:
    """Layered sparse connectivity of a wired CfC.

    Args:
        input_size: F, input features (the sensory neurons).
        masks: one (n_l, in_l) 0/1 float tensor per layer, 1 where neuron i of layer l reads input j: ``in_0 = F``,
            ``in_l = n_{l-1}``. The last layer's neurons are the outputs (the motor neurons of an NCP).

    Raises:
        ValueError: masks that are not 2-D 0/1 tensors chained layer to layer, or an empty list.
    """

    input_size: int
    masks: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        if not self.masks:
            raise ValueError("a wiring needs at least one layer")
        width = self.input_size
        for i, m in enumerate(self.masks):
            if not isinstance(m, Tensor) or m.dim() != 2 or m.shape[1] != width or m.shape[0] < 1:
                got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"wiring mask {i} must have shape (n_{i}, {width}), got {got}")
            if not ((m == 0) | (m == 1)).all():
                raise ValueError(f"wiring mask {i} must hold only 0 and 1")
            width = m.shape[0]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Neurons per layer, in the order of the state (NCP: inter, command, motor)."""
        return tuple(m.shape[0] for m in self.masks)

    @property
    def units(self) -> int:
        """All neurons: the state size."""
        return sum(self.layer_sizes)

    @property
    def output_size(self) -> int:
        """Neurons of the last layer (the motor neurons): the wired encoder's output width."""
        return self.layer_sizes[-1]

    @property
    def synapses(self) -> int:
        """Synapses between layers, the sensory ones included (the within-layer connections are dense)."""
        return int(sum(m.sum().item() for m in self.masks))


def _from_adjacency(input_size: int, layers: list[list[int]], sensory: np.ndarray, adjacency: np.ndarray) -> Wiring:
    """Masks from an ncps-style graph: sensory (F, N) and adjacency (N, N), entries in {-1, 0, 1}, src -> dest."""
    masks = [sensory[:, layers[0]]] + [adjacency[np.ix_(a, b)] for a, b in zip(layers[:-1], layers[1:], strict=True)]
    return Wiring(input_size, tuple(torch.from_numpy((np.abs(m.T) > 0).astype(np.float32)) for m in masks))


def fully_connected(input_size: int, units: int) -> Wiring:
    """One layer of ``units`` neurons reading every input: an unwired CfC without backbone (ncps ``FullyConnected``).

    Raises:
        UserError: ``input_size`` or ``units`` below 1.
    """
    _positive(input_size=input_size, units=units)
    return Wiring(input_size, (torch.ones(units, input_size),))


def ncp(
    input_size: int,
    inter_neurons: int,
    command_neurons: int,
    motor_neurons: int,
    sensory_fanout: int,
    inter_fanout: int,
    recurrent_command_synapses: int,
    motor_fanin: int,
    seed: int = 22222,
) -> Wiring:
    """A Neural Circuit Policy wiring (Lechner et al. 2020, Methods), the synapses of ncps ``NCP`` for ``seed``.

    Each sensory neuron (input) synapses onto ``sensory_fanout`` inter neurons, each inter neuron onto
    ``inter_fanout`` command neurons, each motor neuron receives ``motor_fanin`` command neurons; a neuron left without
    synapses gets the mean fan-in (fan-out) instead. ``recurrent_command_synapses`` are drawn too (to keep ncps's
    random stream), though the CfC reads every neuron of its own layer anyway.

    Returns:
        A three-layer :class:`Wiring`: inter (reads the inputs), command, motor (the outputs).

    Raises:
        UserError: a fan-out or fan-in larger than the layer it draws from, or a size below 1.
    """
    _positive(input_size=input_size, inter_neurons=inter_neurons, command_neurons=command_neurons,
              motor_neurons=motor_neurons, sensory_fanout=sensory_fanout, inter_fanout=inter_fanout,
              motor_fanin=motor_fanin)  # fmt: skip
    for name, value, limit, layer in (("sensory_fanout", sensory_fanout, inter_neurons, "inter"),
                                      ("inter_fanout", inter_fanout, command_neurons, "command"),
                                      ("motor_fanin", motor_fanin, command_neurons, "command")):  # fmt: skip
        if value > limit:
            raise UserError(f"NCP: {name}={value} but there are only {limit} {layer} neurons")
    n = inter_neurons + command_neurons + motor_neurons
    # ncps numbers the neurons motor first: motor 0..M-1, command M..M+C-1, inter after
    motor = list(range(motor_neurons))
    command = list(range(motor_neurons, motor_neurons + command_neurons))
    inter = list(range(motor_neurons + command_neurons, n))
    sensory_ids = list(range(input_size))
    sensory, adjacency = np.zeros((input_size, n), np.int8), np.zeros((n, n), np.int8)
    rng = np.random.RandomState(seed)  # the legacy generator: its stream is frozen, so a seed stays one wiring

    def refill(mean: float, bound: int) -> int:  # the mean fan-in (fan-out) of a neuron left unconnected
        return int(np.clip(int(mean), 1, bound))

    def to_sensory(s, d, p):
        sensory[s, d] = p

    def forward(s, d, p):
        adjacency[s, d] = p

    def backward(s, d, p):  # picker = motor (dest), picked = command (source)
        adjacency[d, s] = p

    _connect(rng, sensory_ids, inter, sensory_fanout,
             refill(input_size * sensory_fanout / inter_neurons, input_size), to_sensory)  # fmt: skip
    # ncps bounds this fan-in by the command layer's size though it draws from the inter layer; kept as it is
    _connect(rng, inter, command, inter_fanout,
             refill(inter_neurons * inter_fanout / command_neurons, command_neurons), forward)  # fmt: skip
    for _ in range(recurrent_command_synapses):
        src, dest = rng.choice(command), rng.choice(command)
        adjacency[src, dest] = rng.choice([-1, 1])
    _connect(rng, motor, command, motor_fanin,
             refill(motor_neurons * motor_fanin / command_neurons, motor_neurons), backward)  # fmt: skip
    return _from_adjacency(input_size, [inter, command, motor], sensory, adjacency)


def _connect(rng: np.random.RandomState, pickers: list[int], pool: list[int], k: int, refill: int, add) -> None:
    """Each picker draws ``k`` distinct neurons of ``pool``; then each pool neuron nobody drew draws ``refill``
    distinct pickers. Every synapse also draws its polarity (-1 or +1), in the order of ncps's generator."""
    missed = list(pool)
    for a in pickers:
        for b in rng.choice(pool, size=k, replace=False):
            if b in missed:
                missed.remove(b)
            add(a, b, rng.choice([-1, 1]))
    for b in missed:
        for a in rng.choice(pickers, size=refill, replace=False):
            add(a, b, rng.choice([-1, 1]))


def auto_ncp(input_size: int, units: int, outputs: int, sparsity: float = 0.5, seed: int = 22222) -> Wiring:
    """An NCP sized from its total neurons and outputs, as ncps ``AutoNCP(units, outputs, sparsity, seed)``.

    Of the ``units - outputs`` hidden neurons 40% are command neurons and the rest inter neurons; every fan-out and
    fan-in is ``1 - sparsity`` of the layer it draws from (at least 1).

    Args:
        input_size: F, inputs (sensory neurons).
        units: N, all neurons (the state size).
        outputs: M, motor neurons (the outputs); below ``units - 2``.
        sparsity: in [0.1, 1.0]; ncps suggests at most 0.9.
        seed: the wiring's random seed.

    Raises:
        UserError: ``outputs >= units - 2`` or ``sparsity`` outside [0.1, 1.0].
    """
    _positive(units=units, outputs=outputs)
    if outputs >= units - 2:
        raise UserError(f"auto_ncp needs outputs < units - 2, got units={units}, outputs={outputs}")
    if not 0.1 <= sparsity <= 1.0:
        raise UserError(f"auto_ncp needs sparsity in [0.1, 1.0], got {sparsity}")
    density, hidden = 1.0 - sparsity, units - outputs
    command = max(int(0.4 * hidden), 1)
    inter = hidden - command
    at_least_one = lambda v: max(int(v), 1)  # noqa: E731
    return ncp(input_size, inter, command, outputs, at_least_one(inter * density), at_least_one(command * density),
               at_least_one(command * density * 2), at_least_one(command * density), seed)  # fmt: skip


def from_ncps(wiring: Any, input_size: int | None = None) -> Wiring:
    """The :class:`Wiring` of an ncps 1.0.1 wiring object (``AutoNCP``, ``NCP``, ``FullyConnected``, ``Wiring``, ...).

    Builds it for ``input_size`` when it is not built yet (ncps draws the sensory synapses then), as ncps's
    ``WiredCfCCell`` does.

    Raises:
        ValueError: an unbuilt wiring without ``input_size``, or one built for another input size.
    """
    if input_size is not None:
        wiring.build(input_size)
    if not wiring.is_built():
        raise ValueError("the ncps wiring is not built: give input_size (its number of input features)")
    layers = [list(wiring.get_neurons_of_layer(i)) for i in range(wiring.num_layers)]
    return _from_adjacency(wiring.input_dim, layers, wiring.sensory_adjacency_matrix, wiring.adjacency_matrix)


def make_wiring(
    name: WiringName,
    input_size: int,
    units: int,
    outputs: int | None = None,
    seed: int = 22222,
    sparsity: float = 0.5,
    ncp_sizes: dict[str, int] | None = None,
) -> Wiring:
    """A wiring from plain values (the forecaster's ``model.wiring*`` options).

    Args:
        name: "auto_ncp", "ncp" (sizes from ``ncp_sizes``) or "fully_connected".
        input_size: F. units: N, all neurons (auto_ncp, fully_connected).
        outputs: M motor neurons of auto_ncp; None: ``max(1, round(0.3 * units))``, ncps's suggestion.
        seed, sparsity: of auto_ncp and ncp (seed only).
        ncp_sizes: the arguments of :func:`ncp` but the input size and seed: ``inter_neurons``,
            ``command_neurons``, ``motor_neurons``, ``sensory_fanout``, ``inter_fanout``,
            ``recurrent_command_synapses``, ``motor_fanin``.

    Raises:
        UserError: an unknown name, missing or unknown ``ncp_sizes`` keys, or sizes the wiring cannot have.
    """
    if name == "fully_connected":
        return fully_connected(input_size, units)
    if name == "auto_ncp":
        return auto_ncp(input_size, units, max(1, round(0.3 * units)) if outputs is None else outputs, sparsity, seed)
    if name == "ncp":
        sizes = dict(ncp_sizes or {})
        if set(sizes) != set(NCP_KEYS):
            raise UserError(
                f"wiring 'ncp' needs wiring_ncp with exactly the keys {list(NCP_KEYS)}, got {sorted(sizes)}"
            )
        return ncp(input_size, **{k: int(sizes[k]) for k in NCP_KEYS}, seed=seed)
    raise UserError(f"unknown wiring {name!r}; choose one of ['auto_ncp', 'fully_connected', 'ncp'] or null")


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise UserError(f"wiring: {name} must be a positive int, got {value!r}")
