"""The memory core: model, validation, ports, service, recall pipeline, fusion, forgetting. No SQL here."""
