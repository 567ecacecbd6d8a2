"""The upstream side: clients that speak each provider's wire protocol,
their framing and their error mapping."""
