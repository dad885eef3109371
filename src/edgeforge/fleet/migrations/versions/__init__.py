"""One file per revision; ids are short names ("0001_registry", "0002_fleet", ...)."""
