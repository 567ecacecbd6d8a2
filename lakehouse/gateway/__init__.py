"""The lakehouse's ``/v1`` edge: a reverse proxy served from the same package."""
