-- Writes real run logs for tests/test_analysis.py. A tiny dense model and two
-- tiny ITT models (top-k and causal routing) train for a few dozen steps on a slice of Tiny Shakespeare,
-- with per-token gradient and routing records every K steps and evaluations
-- under top-k and causal routing. Beside the logs it writes
-- expected.json with what the Lua side saw (parameter counts, every step's
-- loss, the evaluation results), which the test compares with the analysis
-- scripts' output.
--
--   thinklab run tests/lua/make_logs.lua text=experiments/data/tinyshakespeare.txt out=DIR
--   thinklab run tests/lua/make_logs.lua text=... out=DIR live=true   (trains the dense
--       model for a long time, flushing every 2 steps, until it is killed)
local p = thinklab.params{
  text = "",
  out = "",
  steps = 40,
  grads_every = 10,   -- K: steps between token-gradient and routing records
  flush_every = 10,
  live = false,
}
assert(p.text ~= "" and p.out ~= "", "make_logs.lua needs text=FILE and out=DIR")

thinklab.threads(2)
local corpus = thinklab.corpus{path = p.text, max_bytes = 100000, val_fraction = 0.1}
local tok = thinklab.tokenizer{kind = "char", corpus = corpus}
local data = corpus:encode(tok)

local B, T = 8, 32

local function build(kind)
  local layers
  if kind == "itt" or kind == "itt_causal" then
    -- ITT x3: one full pass plus two routed steps of half the tokens, chosen
    -- by top-k or, for itt_causal, by the causal threshold (whose fraction
    -- drifts and whose agreement with top-k is logged).
    layers = thinklab.pattern{n = 2, default = {plugin = "transformer"},
                              odd = {plugin = "itt", steps = 3, ratios = {0.5, 0.5},
                                     routing = kind == "itt" and "topk" or "causal"}}
  else
    layers = thinklab.pattern{n = 2, default = {plugin = "transformer"}}
  end
  return thinklab.model{tokenizer = tok, d_model = 32, n_head = 4, context = T, seed = 3,
                        layers = layers}
end

-- JSON numbers: %.17g reads back as the same double in Python.
local function json_value(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  elseif t == "string" then
    return string.format("%q", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = json_value(v[i]) end
      return "[" .. table.concat(parts, ", ") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = string.format("%q: %s", k, json_value(v[k])) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return "null"
end

local function run(kind, steps, flush_every)
  local model = build(kind)
  local summary = model:summary{print = false}
  local path = p.out .. "/" .. kind .. ".h5"
  local losses = {}
  local tr = thinklab.trainer{
    model = model, data = data, steps = steps, batch_size = B, context = T,
    optimizer = {lr = 3e-3}, schedule = {warmup = 2, min_lr = 3e-4}, clip = 1.0,
    eval_every = steps // 2, eval_batches = 4, seed = 5, threads = 2,
    log = path, log_overwrite = true, log_flush_every = flush_every,
    log_grads_every = p.grads_every, log_token_seqs = 1, progress_every = 0,
    callback_every = 1,
    callback = function(s) losses[s.step] = s.loss end,
  }
  tr:run()
  -- Extra evaluations after the run: the last /eval rows then hold exactly
  -- what Lua saw here.
  local ev = {topk = tr:evaluate{routing = "topk"}}
  if kind ~= "dense" then ev.causal = tr:evaluate{routing = "causal"} end
  -- The ITT log also holds a gradient-spike analysis, for plot_spikes.py.
  local spikes
  if kind == "itt" then
    spikes = tr:gradient_spikes{sequences = 8, seq_len = T, answer_tokens = 4, norms = true}
  end
  tr:close()
  return {
    log = path, params = model:param_count(), flops_per_token = summary.flops_per_token,
    batch_size = B, context = T, steps = steps, losses = losses, eval = ev,
    n_layers = model:n_layers(), spikes = spikes,
  }
end

if p.live then
  run("dense", 100000, 2)
  return
end

local expected = {grads_every = p.grads_every}
for _, kind in ipairs{"dense", "itt", "itt_causal"} do
  expected[kind] = run(kind, p.steps, p.flush_every)
end
local f = assert(io.open(p.out .. "/expected.json", "w"))
f:write(json_value(expected), "\n")
f:close()
print("wrote " .. p.out .. "/dense.h5, itt.h5, itt_causal.h5 and expected.json")
