"""The steps the commands are made of: a run's settings checked (``settings``) and what must exist
before it starts (``readiness``), the toy base's pretraining recipe (``toy_base``), the held-out
scores before and after tuning (``scoring``), distillation's anchors and teacher made ready
(``preservation``), what a finished run reports (``results``), a tuned model loaded for use
(``tuned``), and its target gain against its retention over adapter scales (``tradeoff``)."""
