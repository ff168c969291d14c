"""The `keeldb` command."""
