-- The gradient-spike figure on a real corpus. The script trains a small
-- model, or loads a checkpoint and trains on to steps=. Then, for M held-out
-- sequences one at a time, it takes the gradient of the sequence's loss on
-- its last k tokens (the "answer") and records per layer the nuclear norm,
-- Frobenius norm and largest singular value of the gradients of wq, wk, wv
-- and wo. Sequences are labelled easy or hard by loss quantile and by whether
-- the answer tokens are predicted correctly. Everything goes into the run
-- log, and analysis/plot_spikes.py (per-layer norms, easy vs hard) and
-- analysis/plot_token_grads.py (per-token gradient norms during training)
-- draw the figures.
--
--   build/bin/thinklab run experiments/gradient_spikes.lua
--   build/bin/thinklab run experiments/gradient_spikes.lua model=itt steps=600 out=spikes_itt
--   build/bin/thinklab run experiments/gradient_spikes.lua checkpoint=run.ckpt.h5 steps=600
--   build/bin/thinklab run experiments/gradient_spikes.lua quick=true out=/tmp/spikes
--
-- checkpoint= needs a checkpoint written by a trainer of the same model,
-- batch_size and context.
--
-- NOTE: 40 training steps with the defaults took 51 s on a 2-core machine
-- busy with builds, so the default 400 steps take several minutes.
local p = thinklab.params{
  data = "",            -- text file; empty = data/tinyshakespeare.txt beside this script
  model = "dense",      -- dense, or itt (odd layers ITT x3 at ratio 0.5)
  d_model = 64,
  n_head = 4,
  n_layers = 4,
  context = 64,
  batch_size = 16,
  steps = 400,
  lr = 2e-3,
  seed = 1,
  threads = 2,
  grads_every = 50,     -- K: steps between per-token gradient records
  checkpoint = "",      -- load this checkpoint instead of training
  sequences = 64,       -- M held-out sequences, batch size 1
  seq_len = 64,         -- tokens per analysed sequence
  answer_tokens = 8,    -- k: the loss and the correctness label use the last k tokens
  hard_quantile = 0.8,  -- hard = loss above this quantile (the top 20%)
  easy_quantile = 0.8,  -- easy = loss at most this quantile (0.8: every sequence not hard)
  routing = "topk",     -- routing of ITT layers during the analysis: topk, causal or calibrated
  quick = false,        -- a few-minute setting: 60 steps, 24 sequences, batch 8, grads_every 20, where not given
  out = "",             -- folder for the log and the figures; empty = results/gradient_spikes_<model> beside this script
  python = "/usr/bin/python3",
}

-- quick changes only the settings left at their defaults, so that
-- quick=true steps=100 trains 100 steps.
if p.quick then
  local quick = {steps = {400, 60}, sequences = {64, 24}, batch_size = {16, 8}, grads_every = {50, 20}}
  for key, values in pairs(quick) do
    if p[key] == values[1] then p[key] = values[2] end
  end
end

local here = arg and arg[0] and arg[0]:match("^(.*)/") or "."
local E = dofile(here .. "/common.lua")

-- Every option is checked before anything loads or trains, so that a typo in
-- an analysis option does not cost a training run.
local function check(o)
  local function whole(k, min)
    if math.type(o[k]) ~= "integer" or o[k] < min then
      error(string.format("%s must be a whole number of %d or more; got '%s'", k, min,
                          tostring(o[k])), 0)
    end
  end
  for _, k in ipairs{"d_model", "n_head", "n_layers", "context", "batch_size", "steps", "sequences",
                     "seq_len"} do
    whole(k, 1)
  end
  for _, k in ipairs{"seed", "threads", "grads_every", "answer_tokens"} do whole(k, 0) end
  if o.threads > 4096 then error(string.format("threads must be at most 4096; got '%d'", o.threads), 0) end
  if not (o.lr > 0 and o.lr < math.huge) then
    error(string.format("lr must be a number above 0, such as lr=2e-3; got '%s'", tostring(o.lr)), 0)
  end
  if o.seq_len > o.context then
    error(string.format("seq_len %d must be at most context %d", o.seq_len, o.context), 0)
  end
  if o.answer_tokens > o.seq_len then
    error(string.format("answer_tokens %d must be at most seq_len %d", o.answer_tokens, o.seq_len), 0)
  end
  if not (o.hard_quantile >= 0 and o.hard_quantile <= 1) then
    error(string.format("hard_quantile must lie in [0, 1]; got '%s'", tostring(o.hard_quantile)), 0)
  end
  if not (o.easy_quantile >= 0 and o.easy_quantile <= o.hard_quantile) then
    error(string.format("easy_quantile must lie in [0, hard_quantile = %g] (0 takes hard_quantile); "
                        .. "got '%s'", o.hard_quantile, tostring(o.easy_quantile)), 0)
  end
  if o.model ~= "dense" and o.model ~= "itt" then
    error(string.format("model must be dense or itt, got '%s'", o.model), 0)
  end
  if o.routing ~= "topk" and o.routing ~= "causal" and o.routing ~= "calibrated" then
    error(string.format("routing must be topk, causal or calibrated, got '%s'", o.routing), 0)
  end
end
E.or_usage_error("gradient_spikes.lua", check, p)

local path = p.data ~= "" and p.data or here .. "/data/tinyshakespeare.txt"
local analysis = here .. "/../analysis"
local out = p.out ~= "" and p.out or here .. "/results/gradient_spikes_" .. p.model
E.mkdir(out)
local log = out .. "/" .. p.model .. ".h5"

thinklab.threads(p.threads)
local corpus = thinklab.corpus{path = path, val_fraction = 0.1}
local tok = thinklab.tokenizer{kind = "char", corpus = corpus}
local data = corpus:encode(tok)

local layers
if p.model == "itt" then
  layers = thinklab.pattern{n = p.n_layers, default = {plugin = "transformer"},
                            odd = {plugin = "itt", steps = 3, ratios = {0.5, 0.5}}}
else -- dense; check() has rejected every other model
  layers = thinklab.pattern{n = p.n_layers, default = {plugin = "transformer"}}
end
local model = thinklab.model{tokenizer = tok, d_model = p.d_model, n_head = p.n_head,
                             context = p.context, seed = p.seed, layers = layers}
model:summary()

local tr = thinklab.trainer{
  model = model, data = data, steps = p.steps, batch_size = p.batch_size, context = p.context,
  optimizer = {lr = p.lr, weight_decay = 0.1},
  schedule = {warmup = math.max(1, p.steps // 10), min_lr = p.lr / 10},
  clip = 1.0, eval_every = math.max(1, p.steps // 4), eval_batches = 10, seed = p.seed,
  threads = p.threads, log = log, log_overwrite = true, log_grads_every = p.grads_every,
  progress_every = 50,
}
if p.checkpoint ~= "" then
  print(string.format("loaded %s at step %d", p.checkpoint, tr:load(p.checkpoint)))
end
local first_step = tr:step_index()
local s = tr:run()
local trained = s.step > first_step
print(string.format("step %d: loss %s, validation %.4f nats/char", s.step,
                    s.loss and string.format("%.4f", s.loss) or "n/a", s.eval_loss))

-- The analysis itself needs the Lua binding of tl_spike_analysis (thinklab/train.h).
if not tr.gradient_spikes then
  error("trainer:gradient_spikes{...} is missing from this thinklab's Lua layer. It is the "
        .. "binding of tl_spike_analysis(), which runs the analysis and writes "
        .. "/analysis/gradient_spikes into the trainer's log. The training log " .. log
        .. " was written without it, so plot_spikes.py has nothing to draw", 0)
end
local result = tr:gradient_spikes{
  sequences = p.sequences, seq_len = p.seq_len, answer_tokens = p.answer_tokens,
  hard_quantile = p.hard_quantile, easy_quantile = p.easy_quantile, routing = p.routing,
}
local hard, wrong = 0, 0
for _, seq in ipairs(result.sequences) do
  if seq.hard then hard = hard + 1 end
  if seq.correct == 0 then wrong = wrong + 1 end
end
print(string.format("%d sequences of %d tokens: %d hard by loss (above the %.2f quantile), "
                    .. "%d with a wrong answer among the last %d tokens", #result.sequences,
                    p.seq_len, hard, p.hard_quantile, wrong, p.answer_tokens))
tr:close() -- closes the log so that the figures see every row

local function run(cmd)
  print("$ " .. cmd)
  local ok = os.execute(cmd)
  if not ok then error("failed: " .. cmd, 0) end
end
local q = E.q
for _, label in ipairs{"loss", "answer"} do
  for _, metric in ipairs{"nuclear", "frobenius"} do
    run(string.format("%s %s %s -o %s --label %s --metric %s", q(p.python),
                      q(analysis .. "/plot_spikes.py"), q(log), q(out .. "/" .. label), label,
                      metric))
  end
end
if trained then
  run(string.format("%s %s %s -o %s", q(p.python), q(analysis .. "/plot_token_grads.py"), q(log),
                    q(out)))
end
