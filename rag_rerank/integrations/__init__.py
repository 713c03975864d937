"""Integrations with host frameworks (LlamaIndex), each imported only when used."""
