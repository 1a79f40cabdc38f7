-- Quickstart: train a small LLaMA-style model on Tiny Shakespeare, evaluate
-- it and print a sample.
--
--   build/bin/thinklab run experiments/quickstart.lua
--   build/bin/thinklab run experiments/quickstart.lua steps=100 d_model=64
--
-- With the defaults (0.8M parameters, 600 steps of 16 x 128 characters) the
-- run takes a few minutes on 2 cores.
local p = thinklab.params{
  data = "",           -- text file; empty = data/tinyshakespeare.txt beside this script
  steps = 600,
  batch_size = 16,
  context = 128,
  d_model = 128,
  n_head = 4,
  n_layers = 4,
  lr = 2e-3,
  warmup = 60,         -- at most a tenth of the steps
  seed = 1,
  threads = 2,
  log = "",            -- HDF5 run log path; empty = no log
  checkpoint = "",     -- checkpoint path; empty = none
  checkpoint_overwrite = false, -- replace a checkpoint already at that path
  resume = "",         -- checkpoint to continue from; empty = start fresh. With the
                       -- interrupted run's log, the resumed run continues that log
  sample_tokens = 300, -- characters to sample after training; 0 = no sample
}

-- Checked before training, which the sample follows.
if p.sample_tokens < 0 then
  io.stderr:write(string.format("quickstart.lua: sample_tokens must be 0 (no sample) or more, got %d\n",
                                p.sample_tokens))
  os.exit(2)
end

local here = arg and arg[0] and arg[0]:match("^(.*)/") or "."
local path = p.data ~= "" and p.data or here .. "/data/tinyshakespeare.txt"

thinklab.threads(p.threads)
print(thinklab.threads_info())

local corpus = thinklab.corpus{path = path, val_fraction = 0.1}
local tokenizer = thinklab.tokenizer{kind = "char", corpus = corpus}
local data = corpus:encode(tokenizer)
local n_train, n_val = data:sizes()
print(string.format("corpus %s: %d training and %d validation characters, vocabulary %d",
                    path, n_train, n_val, tokenizer:vocab_size()))

local model = thinklab.model{
  tokenizer = tokenizer,
  style = "llama",
  d_model = p.d_model,
  n_head = p.n_head,
  context = p.context,
  n_layers = p.n_layers,
  seed = p.seed,
}
model:summary()

local final = thinklab.train{
  model = model,
  data = data,
  steps = p.steps,
  batch_size = p.batch_size,
  context = p.context,
  optimizer = {kind = "adamw", lr = p.lr, weight_decay = 0.1},
  schedule = {kind = "cosine", warmup = math.min(p.warmup, p.steps // 10), min_lr = p.lr / 10},
  clip = 1.0,
  eval_every = 100,
  eval_batches = 20,
  seed = p.seed,
  threads = p.threads,
  log = p.log ~= "" and p.log or nil,
  log_overwrite = true,
  checkpoint = p.checkpoint ~= "" and p.checkpoint or nil,
  checkpoint_overwrite = p.checkpoint_overwrite,
  resume = p.resume ~= "" and p.resume or nil,
  progress_every = 0,
  callback_every = 50,
  callback = function(s)
    print(string.format("step %5d/%d  loss %.4f  lr %.2e  %6.0f tok/s  eta %4.0f s%s", s.step, s.total,
                        s.loss, s.lr, s.tokens_per_s, s.eta_s,
                        s.eval_loss and string.format("  val %.4f (step %d)", s.eval_loss, s.eval_step) or ""))
  end,
}

local result = model:evaluate{data = data, batch_size = p.batch_size, context = p.context}
print(string.format("validation: %.4f nats/char, perplexity %.3f, %.4f bits/char over %d characters",
                    result.loss, result.perplexity, result.bits_per_char, result.tokens))
print(string.format("trained %d steps, %d tokens, %.1f s", final.step, final.tokens, final.elapsed_s))

if p.sample_tokens > 0 then
  local prompt = "ROMEO:"
  local sample = model:generate{prompt = prompt, max_tokens = p.sample_tokens, temperature = 0.8, top_k = 20,
                                seed = p.seed}
  print("---- sample ----")
  print(prompt .. sample)
end
