"""The reference testbed of dgamix: a small decoder-only LM (``model``), the corpus's tokens in a
compact vocabulary (``tokens``) packed into windows (``packing``), the run's settings (``config``:
TrainConfig), the trainer loop (``trainer``) and the `dgamix train` stage (``train``). It trains on
the engine's mixture (dgamix.mixing: OnlineMixture, DGA, the sampler) the way a user's own loop
does; the engine never imports it."""
