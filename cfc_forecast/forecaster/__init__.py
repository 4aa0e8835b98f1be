"""The forecaster: a CfC (or GRU/LSTM) encoder with input encoding, heads and losses, as a LightningModule.

Builds on :mod:`cfc_forecast.core` and nothing of the applications (the commands, tuning, batch jobs, backtests):

- ``inputs``   per-step features: missing values filled, observation masks, times since observed; the clock
- ``revin``    reversible instance normalisation (Kim et al., ICLR 2022); ``linear``: DLinear-style linear path
- ``rnn``      GRU / LSTM encoders with the CfC encoder's interface (the recurrent baselines)
- ``heads``    forecast heads: from the last state, per query time (continuous-time), per step; quantiles
- ``network``  ``Forecaster``: batch -> scaled forecasts (inputs, encoder, head), a plain ``nn.Module``
- ``losses``, ``metrics``, ``optim``: masked losses and metrics, optimiser and schedule
- ``module``   ``ForecastModule``: the LightningModule the commands train, test and load
"""
