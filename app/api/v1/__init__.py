"""KServe V1 data plane's `:predict` (`instances` in, `predictions` out, in the shape KServe's huggingfaceserver
answers for a sequence-classification model): its wire schemas and codec here; the route is served beside V1's
`:explain` in app.api.explain.routes."""
