"""Shared infrastructure below training and serving: the typed settings and the outcome/decision/session store."""
