"""Spam scoring: SpamAssassin (spamd), rspamd, and the amavis-style levels both use."""
