"""The keys of the messages between the server and the clients, in one place; imports
nothing, so a client needs no server module to read them. What a client may report
beside its model (its metric names and their types) is in strategies/client_reports.py."""

SERVER_ROUND = "server-round"  # FitIns / EvaluateIns config: the round (int, from 1)
LEARNING_RATE = "learning-rate"  # FitIns config: the clients' learning rate this round
CLIENT_CLIP_NORM = "client-clip-norm"  # FitIns config, client clipping: clip Δ to this S, send Δ
CLIENT_KEY = "client-key"  # GetPropertiesRes properties: the client's stable key
