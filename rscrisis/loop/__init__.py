"""The annotation loop: priority formulas (``ranking``), batch export (``export``), reading
corrections back (``ingest``), fine-tuning on them (``finetune``) and replaying the whole loop
with an oracle (``simulate``)."""
