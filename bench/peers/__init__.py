"""The peers mmserve is measured against: LitServe, and a plain FastAPI app. Same request and response JSON."""
