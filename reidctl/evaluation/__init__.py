"""Retrieval evaluation: mAP/CMC under the re-ID protocols (``metrics``), rankings of a gallery
for queries (``ranking``) and the picture sheets that show them (``sheet``)."""
