"""The keys of the messages between the server and the clients, in one place; imports
nothing, so a client needs no server module to read them. Which metrics a client may
report, and what the server accepts of them, is in strategies/client_reports.py."""

# FitIns / EvaluateIns config
SERVER_ROUND = "server-round"  # the round (int, from 1)
LEARNING_RATE = "learning-rate"  # FitIns: the clients' learning rate at the round's first step
FINAL_LEARNING_RATE = "final-learning-rate"  # FitIns: ... and at its end (linear in between)
CLIENT_CLIP_NORM = "client-clip-norm"  # FitIns, client clipping: clip Δ to this S, send Δ
DISTRIBUTED_SCALE = "dp-scale"  # FitIns, distributed DP: γ, real units per integer step
DISTRIBUTED_NOISE_MULTIPLIER = "dp-sum-noise-multiplier"  # FitIns, distributed DP: σ of the sum's noise
COHORT_SIZE = "cohort-size"  # FitIns, distributed DP: K, the clients sampled this round

# GetPropertiesRes properties
CLIENT_KEY = "client-key"  # the client's stable key

# FitRes metrics
TRAIN_LOSS = "train_loss"  # mean loss of local training
TRAIN_ACCURACY = "train_accuracy"  # accuracy of local training
CLIENT_EPSILON = "client_epsilon"  # local DP: the client's ε so far (its own accountant)
DP_NOISE_MULTIPLIER = "dp_noise_multiplier"  # local DP: the client's DP-SGD σ
DP_SAMPLE_RATE = "dp_sample_rate"  # local DP: the client's Poisson batch rate
DP_ROUNDS = "dp_rounds"  # local DP: the rounds the client has trained in

# EvaluateRes metrics
ACCURACY = "accuracy"  # accuracy of the global model on the client's validation split
