"""The caller side: chatd's HTTP surfaces (native and OpenAI-compatible),
their wire types, streaming framings and error rendering."""
