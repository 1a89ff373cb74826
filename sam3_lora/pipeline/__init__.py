"""The steps the commands are made of: a run's settings checked and built (``settings``) and what must
exist before it starts (``readiness``), the model made ready (``model_setup``), the toy base's
pretraining recipe (``toy_base``), the held-out scores before and after tuning (``scoring``), what a
finished run reports (``results``), a tuned model loaded for use (``tuned``), and its target gain
against its retention over adapter scales (``tradeoff``)."""
