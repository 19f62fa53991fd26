"""The README's inspector example (docs/readme-inspect.md): two catalogs, six receivers."""
