"""The `console` endpoint: the web console at ``/ui`` (api_router: the page, its assets and its JSON API;
protocol: the bodies of its actions; serving: what it reads and does, no FastAPI; static: the app)."""
