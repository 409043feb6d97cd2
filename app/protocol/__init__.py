"""The inference protocols' rules, apart from any transport (KServe's DataPlane): what the HTTP routes and the gRPC
servicer both call. Each module returns plain data or raises app.errors; the transports only decode and encode."""
