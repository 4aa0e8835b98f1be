"""``ForecastModule``: the thin LightningModule around :class:`~cfc_forecast.forecaster.network.Forecaster`.

It builds the network from plain values (``save_hyperparameters``, so a checkpoint alone rebuilds it and a tuner
addresses every value as ``model.<name>``), computes the masked loss, logs ``{stage}/loss`` and the masked metrics
``{stage}/mse``, ``{stage}/mae``, ``{stage}/mse_per_var``, ``{stage}/mae_per_var`` (with quantiles also
``{stage}/wql`` and ``{stage}/coverage``) in the data's scaled units, and returns forecasts in original units from
``predict_step``. Evaluation logs nothing per batch: ``{stage}/loss`` and the metrics are computed once per epoch
from summed states (:mod:`cfc_forecast.forecaster.metrics`), the same on one process and on any number of DDP ranks.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as L
from torch import Tensor, nn

from cfc_forecast.batch import Batch
from cfc_forecast.core.cell import Activation, HeadActivation, Mode
from cfc_forecast.core.encoder import CfCEncoder
from cfc_forecast.core.wired import WiredCfCEncoder, build_wired_encoder
from cfc_forecast.core.wiring import WiringName
from cfc_forecast.errors import UserError
from cfc_forecast.forecaster.conformal import Calibration
from cfc_forecast.forecaster.heads import MLPActivation, build_head
from cfc_forecast.forecaster.inputs import CategoricalEmbedding, ElapsedTime, Fill, InputEncoding, embedding_size
from cfc_forecast.forecaster.linear import LastValueSkip, LinearPath
from cfc_forecast.forecaster.losses import REDUCTIONS, LossName, Reduction, masked_loss, point_index
from cfc_forecast.forecaster.metrics import ForecastMetrics, MaskedLoss
from cfc_forecast.forecaster.network import Forecaster, StaticInto
from cfc_forecast.forecaster.optim import OptimizerName, SchedulerName, configure
from cfc_forecast.forecaster.revin import RevIN
from cfc_forecast.forecaster.rnn import RNNEncoder
from cfc_forecast.forecaster.variables import Mixing, PerVariable

EncoderName = Literal["cfc", "lstm", "gru"]
Encoding = Literal["shared", "per_variable"]
HeadChoice = Literal["auto", "direct", "continuous", "step"]
ROLES = ("inputs", "static", "known_future")  # the roles of categorical covariates (``categorical_sizes``' keys)


class ForecastModule(L.LightningModule):
    """Forecast irregular multivariate series with a CfC (or LSTM / GRU) encoder and a forecast head.

    Args:
        n_inputs: F, input variables (linked from the DataModule).
        n_targets: C, target variables (linked).
        horizon: K of a regular horizon, None for arbitrary query times, 0 for per-step targets (linked).
        n_static: S, static covariates (linked); see ``static_into``.
        n_future: Fk, known-future covariates at the query times (linked); the head reads them.
        time_unit: the unit of every time in a batch (linked; recorded so a checkpoint says what dt means).
        target_inputs: (C,) input column holding each target, -1 if none (linked; RevIN maps forecasts back
            with the statistics of that input).
        input_names: names of the inputs (linked; checked when a checkpoint meets other data).
        target_names: names of the targets (linked; checked likewise).
        lookback: L of count windows, None otherwise (linked); read by ``linear_path``.
        categorical_sizes: codes per categorical column by role, ``{"inputs": [...], "static": [...],
            "known_future": [...]}`` (linked from the DataModule's ``categorical_sizes``; None: no categorical
            covariates). Each column gets a learned embedding (:class:`~.inputs.CategoricalEmbedding`).
        embedding_dim: the width of every categorical embedding; None: per column
            ``min(16, ceil(1.6 * n ** 0.56))`` for n codes (:func:`~cfc_forecast.forecaster.inputs.embedding_size`).
        encoder: "cfc" (closed-form continuous-time) or the baselines "lstm" / "gru".
        hidden_size: H, state units.
        mode, backbone_units, backbone_layers, backbone_dropout, activation, head_activation, mixed_memory,
            memory_wiring, forget_bias: the CfC options (see :class:`~cfc_forecast.core.encoder.CfCEncoder`).
        wiring: a sparse Neural Circuit Policy wiring of the CfC (Lechner et al. 2020; :mod:`cfc_forecast.core.wiring`):
            "auto_ncp", "ncp" (sizes from ``wiring_ncp``), "fully_connected", or None (the unwired CfC with its
            backbone). A wired CfC has no backbone (``backbone_*`` are not used); it runs the native loop layer after
            layer (``impl``), or with mixed memory (wired as ncps wires it) the pure-PyTorch loop. The head reads the
            motor neurons (the last layer): they are the circuit's output in the NCP design, and a head reading every
            neuron would bypass the sparse command -> motor synapses. For "fully_connected" the one layer is every
            neuron.
        wiring_units: N, all neurons of auto_ncp / fully_connected; None: ``hidden_size``.
        wiring_outputs: M, the motor neurons of auto_ncp (the head's input width); None: 30% of the neurons.
        wiring_seed: the random seed of the synapses (auto_ncp, ncp); the masks are also saved in the checkpoint.
        wiring_sparsity: auto_ncp's sparsity in [0.1, 1.0]. wiring_ncp: the sizes of "ncp" (the arguments of
            :func:`cfc_forecast.core.wiring.ncp`: inter_neurons, command_neurons, motor_neurons, sensory_fanout,
            inter_fanout, recurrent_command_synapses, motor_fanin).
        rnn_layers: stacked layers of the LSTM / GRU baselines.
        encoding: "shared": one sequence per window over every step where any variable was observed (the inputs
            as ``fill`` / ``append_mask`` / ``append_delta`` build them). "per_variable": every input variable's
            observations at their own times, each with its own elapsed time, through the same encoder (``encoder``
            picks CfC / GRU / LSTM), then ``variable_mixing`` between the variables and the head per target
            (:mod:`.variables`); needs every target among the inputs and reads observed values only,
            so ``fill``, ``append_mask`` and ``append_delta`` do not apply.
        variable_embedding: E, the learned variable embedding of ``per_variable``.
        variable_mixing: "attention" (multi-head attention over the variable states at the end of the history
            and, with the continuous head, at each query time) or "none" (``per_variable`` only).
        mixing_heads: attention heads of that mixing (``hidden_size`` must be divisible by it).
        fill: missing inputs: "locf" carries each feature's last observation forward, "zeros" leaves 0.
        append_mask: append the observation mask to the inputs (the CfC paper's recipe).
        append_delta: append each feature's time since its last observation.
        time_scale: factor on every elapsed time (data unit -> model scale), e.g. 1/60 for minutes to hours.
        learn_time_scale: learn that factor, starting from ``time_scale``.
        revin: reversible instance normalisation (per window, per variable, masked).
        linear_path: add a linear forecast from each target's own last L values, one map shared by all targets
            (DLinear / RLinear style, :mod:`cfc_forecast.forecaster.linear`): the encoder and head learn what it misses.
            Count windows and the direct head only.
        last_value_skip: the head forecasts the change from each target's last observed value in the window
            (:class:`~cfc_forecast.forecaster.linear.LastValueSkip`); any window kind, not the per-step head.
        channel_independent: one sequence per target through the same encoder and head (its input column beside
            the non-target inputs), as PatchTST; needs every target among the inputs (``target_inputs``).
        static_into: where static covariates go: "state" (the encoder's initial state), "head" (read by the
            head's MLP beside the state) or "both".
        head: "direct" (K x C from the last state), "continuous" (evolve the last state to each query time),
            "step" (next value at every input step) or "auto": step if horizon == 0, direct if horizon > 0,
            else continuous.
        head_hidden_sizes: hidden widths of the head's MLP. head_mlp_activation, head_dropout: of that MLP.
        query_cell_units: backbone width of the continuous head's CfC cell.
        loss: "mse", "mae", "huber" or "pinball" (needs ``quantiles``). huber_delta: Huber threshold (scaled units).
        loss_reduction: "values" (the mean over all observed target values) or "variables" (each target's mean
            first, then the mean over targets: trains for the per-variable metrics, as PhysioNet's protocol
            reports them).
        quantiles: sorted levels in (0, 1) for the pinball loss; the one nearest 0.5 is the point forecast.
        optimizer, lr, weight_decay, scheduler: see :func:`cfc_forecast.forecaster.optim.configure`.
        impl: the CfC loop: "auto" (native when it builds), "native" or "python".
        cuda_graphs: on CUDA, run each training step's CfC loop from a CUDA graph, one per batch shape, forward and
            backward (``cfc_forecast.core.graphs``; a plain CfC encoder only, without a wiring; not yet run on a GPU:
            ``benchmarks/gpu_check.py`` checks and times it). Switches the encoder's per-call value checks off (the
            DataModule has checked the data). Elsewhere (CPU, validation, autocast) the loop runs as without it.
    """

    def __init__(
        self,
        n_inputs: int,
        n_targets: int,
        horizon: int | None = None,
        n_static: int = 0,
        n_future: int = 0,
        time_unit: str = "step",
        target_inputs: list[int] | None = None,
        input_names: list[str] | None = None,
        target_names: list[str] | None = None,
        lookback: int | None = None,
        categorical_sizes: dict[str, list[int]] | None = None,
        embedding_dim: int | None = None,
        encoder: EncoderName = "cfc",
        hidden_size: int = 64,
        mode: Mode = "default",
        backbone_units: int = 128,
        backbone_layers: int = 1,
        backbone_dropout: float = 0.0,
        activation: Activation = "lecun_tanh",
        head_activation: HeadActivation = "tanh",
        mixed_memory: bool = False,
        memory_wiring: Literal["ncps", "paper"] = "ncps",
        forget_bias: float = 1.0,
        wiring: WiringName | None = None,
        wiring_units: int | None = None,
        wiring_outputs: int | None = None,
        wiring_seed: int = 22222,
        wiring_sparsity: float = 0.5,
        wiring_ncp: dict[str, int] | None = None,
        rnn_layers: int = 1,
        encoding: Encoding = "shared",
        variable_embedding: int = 16,
        variable_mixing: Mixing = "attention",
        mixing_heads: int = 4,
        fill: Fill = "locf",
        append_mask: bool = True,
        append_delta: bool = False,
        time_scale: float = 1.0,
        learn_time_scale: bool = False,
        revin: bool = False,
        linear_path: bool = False,
        last_value_skip: bool = False,
        channel_independent: bool = False,
        static_into: StaticInto = "state",
        head: HeadChoice = "auto",
        head_hidden_sizes: list[int] | None = None,
        head_mlp_activation: MLPActivation = "gelu",
        head_dropout: float = 0.0,
        query_cell_units: int = 64,
        loss: LossName = "mse",
        huber_delta: float = 1.0,
        loss_reduction: Reduction = "values",
        quantiles: list[float] | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: SchedulerName = "none",
        impl: Literal["auto", "native", "python"] = "auto",
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _check_quantiles(loss, quantiles)
        if loss_reduction not in REDUCTIONS:
            raise UserError(f"unknown loss_reduction {loss_reduction!r}; choose one of {list(REDUCTIONS)}")
        self.head_name = _resolve_head(head, horizon)
        self.n_outputs = len(quantiles) if loss == "pinball" else 1
        self.point = point_index(quantiles if loss == "pinball" else None)
        self.net = self._build()
        q, stages = self.quantile_levels, ("val", "test")
        self.metrics = nn.ModuleDict({s: ForecastMetrics(n_targets, q) for s in stages})
        self.losses = nn.ModuleDict({s: MaskedLoss(n_targets, loss, q, huber_delta, loss_reduction) for s in stages})
        # split-conformal intervals (``cfc-forecast calibrate``): plain values in checkpoint["conformal"], not weights
        self.conformal: Calibration | None = None

    @property
    def quantile_levels(self) -> list[float] | None:
        """The quantile levels of the Q outputs (pinball loss), else None (one point forecast)."""
        return list(self.hparams.quantiles) if self.hparams.loss == "pinball" else None

    @property
    def output_levels(self) -> list[float] | None:
        """The quantile levels of ``predict_step``'s outputs: the calibrated intervals' bounds (and the model's own
        quantiles, or 0.5 for its point forecast) when calibrated, else :attr:`quantile_levels`."""
        return self.conformal.output_levels if self.conformal is not None else self.quantile_levels

    def _targets_in_inputs(self, option: str, every: bool = False) -> list[int]:
        """``target_inputs`` for an option that reads each target's input column; a clear error without it."""
        t = self.hparams.target_inputs
        if t is None or (every and any(i < 0 for i in t)):
            need = "every target among the inputs" if every else "target_inputs"
            raise UserError(
                f"{option}=True needs {need} (the input column of each target; the CLI links it), got target_inputs={t}"
            )
        return list(t)

    def _build(self) -> Forecaster:
        h = self.hparams
        channels = self._targets_in_inputs("channel_independent", every=True) if h.channel_independent else None
        inputs = InputEncoding(h.n_inputs - len(channels) + 1 if channels else h.n_inputs, h.fill, h.append_mask,
                               h.append_delta)  # fmt: skip
        if h.cuda_graphs and (h.wiring is not None or h.encoder != "cfc"):
            raise UserError(
                f"cuda_graphs=true graphs the plain CfC encoder only, not encoder={h.encoder!r}"
                + (f" with wiring={h.wiring!r}" if h.wiring is not None else "") + ": leave --model.cuda_graphs out"
            )
        cat = self._embeddings()
        width = {k: 0 if e is None else e.size for k, e in cat.items()}
        per_variable = self._per_variable()
        if per_variable is not None and any(e is not None for e in cat.values()):
            raise UserError(
                "encoding='per_variable' does not read categorical covariates yet: drop --data.categorical or use "
                "encoding='shared'"
            )
        # the encoder reads the embeddings beside the encoded values, or one variable's values at a time
        n_features = inputs.size + width["inputs"] if per_variable is None else per_variable.input_size
        if h.wiring is not None and h.encoder != "cfc":
            raise UserError(f"wiring={h.wiring!r} needs encoder='cfc', got encoder={h.encoder!r}")
        if h.wiring is not None:
            encoder = build_wired_encoder(
                n_features, h.wiring, h.wiring_units or h.hidden_size, h.wiring_outputs, h.wiring_seed,
                h.wiring_sparsity, h.wiring_ncp, mode=h.mode, head_activation=h.head_activation,
                mixed_memory=h.mixed_memory, memory_wiring=h.memory_wiring, forget_bias=h.forget_bias, impl=h.impl,
            )  # fmt: skip
        elif h.encoder == "cfc":
            encoder = CfCEncoder(
                n_features,
                h.hidden_size,
                mode=h.mode,
                backbone_units=h.backbone_units,
                backbone_layers=h.backbone_layers,
                backbone_dropout=h.backbone_dropout,
                activation=h.activation,
                head_activation=h.head_activation,
                mixed_memory=h.mixed_memory,
                memory_wiring=h.memory_wiring,
                forget_bias=h.forget_bias,
                impl=h.impl,
                check_values=not h.cuda_graphs,
                cuda_graphs=h.cuda_graphs,
            )
        elif h.encoder in ("lstm", "gru"):
            encoder = RNNEncoder(h.encoder, n_features, h.hidden_size, h.rnn_layers, h.backbone_dropout)
        else:
            raise UserError(f"unknown encoder {h.encoder!r}; choose one of ['cfc', 'gru', 'lstm']")
        head = build_head(
            self.head_name,
            encoder.output_size if isinstance(encoder, WiredCfCEncoder) else h.hidden_size,  # wired: motor neurons
            1 if channels or per_variable is not None else h.n_targets,
            self.n_outputs,
            h.horizon,
            h.n_future + width["known_future"],
            list(h.head_hidden_sizes or []),
            h.head_mlp_activation,
            h.head_dropout,
            h.query_cell_units,
            n_context=h.n_static + width["static"] if h.static_into != "state" else 0,
        )
        revin = RevIN(h.n_inputs, self._targets_in_inputs("revin")) if h.revin else None
        linear = None
        if h.linear_path:
            if self.head_name != "direct" or not h.lookback or not h.horizon:
                raise UserError(
                    "linear_path=True needs count windows (a lookback and a horizon, which the CLI links from the "
                    f"DataModule) and the direct head; got head={self.head_name!r}, lookback={h.lookback}, "
                    f"horizon={h.horizon}"
                )
            linear = LinearPath(h.lookback, h.horizon, self._targets_in_inputs("linear_path"))
        skip = None
        if h.last_value_skip:
            if self.head_name == "step":
                raise UserError("last_value_skip=True needs a forecast head; the per-step head ('step') has none")
            skip = LastValueSkip(self._targets_in_inputs("last_value_skip"))
        clock = ElapsedTime(h.time_scale, h.learn_time_scale)
        return Forecaster(inputs, clock, encoder, head, h.n_static, h.n_future, revin, h.static_into,
                          linear=linear, channels=channels, skip=skip, categorical=cat,
                          per_variable=per_variable)  # fmt: skip

    def _embeddings(self) -> dict[str, CategoricalEmbedding | None]:
        """One embedding table per categorical column, by role (None for a role without any)."""
        sizes, dim = self.hparams.categorical_sizes or {}, self.hparams.embedding_dim
        if dim is not None and dim < 1:
            raise UserError(f"--model.embedding_dim must be >= 1 (or null for the size rule), got {dim}")
        if unknown := set(sizes) - set(ROLES):
            raise UserError(f"categorical_sizes has unknown roles {sorted(unknown)}; the roles are {list(ROLES)}")
        out: dict[str, CategoricalEmbedding | None] = {}
        for role in ROLES:
            n = list(sizes.get(role) or [])
            out[role] = CategoricalEmbedding(n, [dim or embedding_size(k) for k in n]) if n else None
        return out

    def _per_variable(self) -> PerVariable | None:
        """The per-variable encoding's variable states and mixing (``encoding='per_variable'``), else None."""
        h = self.hparams
        if h.encoding not in ("shared", "per_variable"):
            raise UserError(f"unknown encoding {h.encoding!r}; choose one of ['per_variable', 'shared']")
        if h.encoding == "shared":
            return None
        if h.wiring is not None:
            raise UserError(f"encoding='per_variable' runs an unwired encoder; drop wiring={h.wiring!r}")
        if self.head_name == "step":
            raise UserError("encoding='per_variable' needs a forecast head; the per-step head ('step') has none")
        targets = h.target_inputs
        if targets is None or any(i < 0 for i in targets):
            raise UserError(
                "encoding='per_variable' needs every target among the inputs (target_inputs, which the CLI links "
                f"from the DataModule), got target_inputs={targets}"
            )
        return PerVariable(h.n_inputs, h.hidden_size, list(targets), h.variable_embedding, h.variable_mixing,
                           h.mixing_heads)  # fmt: skip

    def forward(self, batch: Batch, observed_only: bool = False) -> Tensor:
        """Scaled forecasts (B, K, C, Q); (B, T, C, Q) from the per-step head.

        ``observed_only``: forecast only the observed targets (``batch.y_mask``) where the encoding can skip the
        others (``encoding='per_variable'``; :meth:`Forecaster.forward`), as validation and test do: their metrics
        read only those. Prediction forecasts every target at every query.

        Outside training, the Q quantile outputs are sorted along Q (monotone rearrangement: Chernozhukov,
        Fernandez-Val and Galichon, "Quantile and probability curves without crossing", Econometrica 2010), so a
        forecast's quantiles never cross (a median above its 90% quantile) in metrics, plots or written forecasts;
        training fits the raw outputs with the pinball loss."""
        pred = self.net(batch, observed_only=True) if observed_only else self.net(batch)
        if self.training or pred.shape[-1] == 1:
            return pred
        return pred.sort(dim=-1).values

    def _truth(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.head_name == "step":
            if batch.y_step is None:
                raise UserError("head='step' needs per-step targets: build the DataModule with step_targets=True")
            return batch.y_step, batch.y_step_mask
        if batch.y is None:
            raise ValueError("this batch has no targets (a prediction batch?)")
        return batch.y, batch.y_mask

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        pred = self(batch)
        y, mask = self._truth(batch)
        h = self.hparams
        loss = masked_loss(pred, y, mask, h.loss, self.quantile_levels, h.huber_delta, h.loss_reduction)
        self.log("train/loss", loss, batch_size=batch.batch_size, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _evaluation_step(self, batch: Batch, stage: str) -> None:
        # only summed states here: {stage}/loss and the metrics are computed once per epoch from them
        y, mask = self._truth(batch)
        pred = self(batch, observed_only=True).detach()  # the metrics read the observed targets only
        self.losses[stage].update(pred, y, mask)
        self.metrics[stage].update(pred, y, mask)

    def on_fit_start(self) -> None:
        self.conformal = None  # a model trained further is no longer the one its intervals were calibrated for

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _log_metrics(self, stage: str) -> None:
        # compute() sums the states over every process (every rank calls it, a rank without windows of its own
        # included: the DataModule gives it a placeholder batch), so each rank holds the same exact numbers. The
        # max over identical values is that value: it tells Lightning they are synced, where a mean would round
        sync = {"sync_dist": True, "reduce_fx": "max"}
        self.log(f"{stage}/loss", self.losses[stage].compute(), prog_bar=True, **sync)
        self.log_dict({f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}, **sync)
        self.losses[stage].reset()
        self.metrics[stage].reset()

    def on_train_epoch_end(self) -> None:
        per_variable = self.net.per_variable
        if per_variable is not None:  # the per-variable encoding's padding: recurrence steps computed in vain
            counts = per_variable.reset_padding()
            if counts["observed"]:
                self.log("train/padded_per_value", counts["padded"] / counts["observed"], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Forecasts in the data's original units, with what a writer needs to place them.

        A calibrated model (``cfc-forecast calibrate``) returns its conformal intervals' bounds among the Q outputs
        (:attr:`output_levels`; :meth:`cfc_forecast.forecaster.conformal.Calibration.apply`).

        Returns:
            ``prediction`` (B, K, C, Q) float64 in original units (Q quantiles, or 1); ``time`` (B, K) float64
            absolute target times (for the per-step head: the time of the step each forecast is made at);
            ``mask`` (B, K) bool real queries; ``series`` (B,); ``origin`` (B,) absolute origin times; for a
            calibrated model also ``point`` (B, K, C): the model's own point forecast, the ``prediction`` column
            (the calibrated outputs are sorted per forecast, so the column of a level holds the rearranged value).
        """
        pred = self(batch)
        point = None
        if self.conformal is not None and self.head_name != "step":
            point = batch.to_original_units(pred[..., self.point : self.point + 1])[..., 0]  # the model's own
            pred = self.conformal.apply(pred, batch.query_t)
        values = batch.to_original_units(pred)
        if self.head_name == "step":
            rel, absolute, mask = batch.t, batch.t_abs, batch.step_mask
        else:
            rel, absolute, mask = batch.query_t, batch.query_t_abs, batch.query_mask
        time = batch.origin[:, None] + rel.double()  # off by microseconds: the offsets are float32
        if absolute is not None:
            # the batch's float64 times where they are these offsets' (a batch whose query_t was replaced by hand
            # keeps stale absolute times: they are not used)
            same = (absolute - time).abs() <= 1e-6 * (1.0 + rel.double().abs())
            time = absolute.where(same, time)
        out = {
            "prediction": values,
            "time": time,
            "mask": mask,
            "series": batch.series,
            "origin": batch.origin,
        }
        if point is not None:
            out["point"] = point
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        h, trainer = self.hparams, self.trainer
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 100
        return configure(
            self, h.optimizer, h.lr, h.weight_decay, h.scheduler, epochs, int(trainer.estimated_stepping_batches)
        )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Any,
        map_location: Any = None,
        hparams_file: str | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> ForecastModule:
        """Lightning's ``load_from_checkpoint``, always with ``weights_only=True`` (whatever torch's default or
        ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` say: a crafted file cannot run code).

        Raises:
            CheckpointError: a missing, empty, truncated or foreign file, or ``weights_only=False`` asked for.
        """
        from cfc_forecast.checkpoints import CheckpointError, load_checkpoint

        if weights_only is False:
            raise CheckpointError("cfc-forecast checkpoints hold tensors and plain values: load with weights_only=True")
        load_checkpoint(checkpoint_path)  # the one-line errors for a file that is not a checkpoint
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on other variables than this model was built for (before its weights load)."""
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("input_names", "target_names"):
            ours, theirs = self.hparams.get(key), saved.get(key)
            if ours is not None and theirs is not None and list(ours) != list(theirs):
                raise UserError(
                    f"the checkpoint was trained with {key.split('_')[0]}s {list(theirs)}, "
                    f"the data has {list(ours)}; predict with data of the same variables"
                )
        state = checkpoint.get("conformal")
        self.conformal = Calibration.from_dict(state) if state else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.conformal is not None:
            checkpoint["conformal"] = self.conformal.to_dict()


def _resolve_head(head: HeadChoice, horizon: int | None) -> str:
    if head != "auto":
        return head
    if horizon == 0:
        return "step"
    return "direct" if horizon else "continuous"


def _check_quantiles(loss: str, quantiles: list[float] | None) -> None:
    if loss == "pinball":
        q = list(quantiles or [])
        if not q or q != sorted(q) or len(set(q)) != len(q) or not all(0 < v < 1 for v in q):
            raise UserError(f"--model.loss pinball needs --model.quantiles: sorted levels in (0, 1), got {quantiles}")
    elif quantiles:
        raise UserError(f"--model.quantiles {quantiles} need --model.loss pinball (the quantile loss), got {loss!r}")
