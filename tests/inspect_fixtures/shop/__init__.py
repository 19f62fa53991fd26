"""The inspector example of the CLI guide (docs/cli.md): two catalogs, six receivers."""
