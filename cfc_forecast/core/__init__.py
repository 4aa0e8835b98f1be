"""The CfC core: the cell, the sequence encoders and the loops that run them.

Layers (each imports only from the ones before it; nothing here imports the forecaster or the applications):

- ``checks``   input checks at the public boundary of the cell and the encoders
- ``cell``     the CfC cell (Hasani et al., Nature Machine Intelligence 2022, eqs. 9-10): modes, backbone, heads
- ``memory``   the LSTM memory cell of the mixed-memory CfC (CfC-mmRNN)
- ``native``   the C++ sequence loop and its backward (``csrc/``), built on first use
- ``kernels``  the fused Triton sequence kernel for CUDA (needs the ``kernels`` extra; off by default)
- ``wiring``   sparse NCP / random / fully-connected wirings (Lechner et al. 2020)
- ``encoder``  ``CfCEncoder``: a whole sequence through the cell, on the fastest path that applies
- ``wired``    ``WiredCfCEncoder``: the CfC with a wiring's sparsity masks

The forecaster (``cfc_forecast.forecaster``) builds on these; ``import cfc_forecast.core`` imports nothing heavy.
"""
