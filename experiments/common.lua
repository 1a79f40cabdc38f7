-- Shared pieces of the experiment scripts: model sizes per setting, corpus
-- loading, the five compared models, small file helpers and the summary
-- table. Load it with
--
--   local E = dofile(here .. "/common.lua")
--
-- Nothing here trains; compare.lua, ablations.lua and elastic.lua do.
local E = {}

-- Model and run sizes, every field overridable from the command line.
--   small: d 64, context 64, 300 steps (0.22M parameters): the ablations and
--          the other corpora, a few minutes for six models.
--   quick: the full model (d 128, 4 layers, 16 x 128 tokens, 0.82M
--          parameters) for 700 steps: the five models of compare.lua in about
--          eight minutes on 2 cores, what experiments/run_main.sh runs.
--   full:  the same model for 1200 steps, for the results page.
E.settings = {
  small = {d_model = 64, n_head = 4, n_layers = 4, context = 64, batch_size = 16, steps = 300,
           lr = 2e-3, eval_every = 100, eval_batches = 10},
  quick = {d_model = 128, n_head = 4, n_layers = 4, context = 128, batch_size = 16, steps = 700,
           lr = 2e-3, eval_every = 100, eval_batches = 10},
  full = {d_model = 128, n_head = 4, n_layers = 4, context = 128, batch_size = 16, steps = 1200,
          lr = 2e-3, eval_every = 200, eval_batches = 20},
}

-- Returns a copy of p with every zero or missing size field taken from the
-- setting's defaults.
function E.resolve(p)
  local s = E.settings[p.setting]
  if not s then
    error(string.format("setting must be small, quick or full, got '%s'", tostring(p.setting)), 0)
  end
  local r = {}
  for k, v in pairs(p) do r[k] = v end
  for k, v in pairs(s) do
    if r[k] == nil or r[k] == 0 then r[k] = v end
  end
  -- Checked here, once, rather than by the trainer for every model.
  local function whole(k, min, note)
    if r[k] ~= nil and (math.type(r[k]) ~= "integer" or r[k] < min) then
      error(string.format("%s must be a whole number of %d or more%s; got '%s'", k, min, note,
                          tostring(r[k])), 0)
    end
  end
  whole("warmup", 0, " (0 takes a tenth of the steps)")
  whole("threads", 0, " (0 takes every core)")
  whole("seed", 0, "")
  whole("bpe_vocab", 1, "")
  if r.threads ~= nil and r.threads > 4096 then
    error(string.format("threads must be at most 4096; got '%s'", tostring(r.threads)), 0)
  end
  if r.corpus ~= nil and not E.corpora[r.corpus] then
    error(string.format("corpus must be shakespeare, wikitext or kjv, got '%s'", tostring(r.corpus)), 0)
  end
  for k, v in pairs(s) do
    if k == "lr" then
      if type(r.lr) ~= "number" or r.lr <= 0 or r.lr ~= r.lr or r.lr == math.huge then
        error(string.format("lr must be a number above 0, such as lr=%g; got '%s'", v,
                            tostring(r.lr)), 0)
      end
    elseif math.type(r[k]) ~= "integer" or r[k] < 0 then
      error(string.format("%s must be a whole number above 0 (0 takes the setting's %d); got '%s'",
                          k, v, tostring(r[k])), 0)
    end
  end
  return r
end

-- Returns f(v), or prints "script: <error>" and exits with status 2 when f
-- raises: the scripts' check for a bad command-line value.
function E.or_usage_error(script, f, v)
  local ok, result = pcall(f, v)
  if not ok then
    io.stderr:write(script .. ": " .. tostring(result) .. "\n")
    os.exit(2)
  end
  return result
end

-- "1,2" or 1 -> {1, 2}, each a whole number; raises an error naming the value
-- otherwise.
function E.seeds(v)
  if type(v) == "string" and (v:find(",,", 1, true) or v:find("^,") or v:find(",$")) then
    error(string.format("seeds has an empty entry; give whole numbers separated by commas, such "
                        .. "as 1,2,3; got '%s'", v), 0)
  end
  local out = E.list(v)
  for _, s in ipairs(out) do
    if math.type(s) ~= "integer" or s < 0 then
      error(string.format("seeds must be whole numbers of 0 or more separated by commas, such as 1,2,3; got '%s'",
                          tostring(v)), 0)
    end
  end
  if #out == 0 then error("seeds is empty; give at least one seed, such as seeds=1", 0) end
  return out
end

-- "1,2" or 1 or {1, 2} -> {1, 2}.
function E.list(v)
  if type(v) == "table" then return v end
  local out = {}
  for item in tostring(v):gmatch("[^,%s]+") do out[#out + 1] = tonumber(item) or item end
  return out
end

-- Loads a corpus and its tokenizer. Returns the dataset, the tokenizer and
-- a one-line description.
--   shakespeare: last 10% for validation, characters.
--   wikitext:    train on the WikiText-2 valid split, evaluate on test;
--                characters of both files (test has characters valid lacks).
--   kjv:         last 10% for validation, BPE trained on the training split.
-- The corpora that load_corpus loads.
E.corpora = {shakespeare = true, wikitext = true, kjv = true}

function E.load_corpus(name, data_dir, bpe_vocab)
  local corpus, tok
  if name == "shakespeare" then
    corpus = thinklab.corpus{path = data_dir .. "/tinyshakespeare.txt", val_fraction = 0.1}
    tok = thinklab.tokenizer{kind = "char", corpus = corpus}
  elseif name == "wikitext" then
    corpus = thinklab.corpus{train_path = data_dir .. "/wikitext2_valid.txt",
                             val_path = data_dir .. "/wikitext2_test.txt"}
    tok = thinklab.tokenizer{kind = "char", corpus = corpus}
  elseif name == "kjv" then
    corpus = thinklab.corpus{path = data_dir .. "/kjv_bible.txt", val_fraction = 0.1}
    tok = thinklab.tokenizer{kind = "bpe", corpus = corpus, vocab_size = bpe_vocab}
  else
    error(string.format("corpus must be shakespeare, wikitext or kjv, got '%s'", tostring(name)), 0)
  end
  local data = corpus:encode(tok)
  local n_train, n_val = data:sizes()
  local desc = string.format("%s: %d training and %d validation tokens, %s vocabulary %d", name, n_train,
                             n_val, tok:kind(), tok:vocab_size())
  return data, tok, desc
end

-- Layer pattern of the ITT paper (Chen et al., arXiv 2502.13842): layers
-- 1, 3, ... (from 0) are the special layer, the others dense.
function E.layers(n, special)
  if not special then return thinklab.pattern{n = n, default = {plugin = "transformer"}} end
  return thinklab.pattern{n = n, default = {plugin = "transformer"}, odd = special}
end

-- The five compared models, in table order. `special` is the odd-layer spec;
-- `scale` gives a dense model with that multiple of the dense parameters.
E.models = {
  {name = "dense", label = "Transformer"},
  {name = "loop", label = "Loop x4", special = {plugin = "loop", steps = 4}},
  {name = "itt", label = "ITT x4", routed = true,
   special = {plugin = "itt", steps = 4, ratios = {0.5, 0.5, 0.5}}},
  {name = "mod", label = "MoD c=0.125", routed = true, special = {plugin = "mod", capacity = 0.125}},
  {name = "dense3x", label = "Transformer 3x", scale = 3},
}

-- Builds the model of spec m for the resolved parameters r.
function E.build(m, r, tok, seed)
  local base = {tokenizer = tok, d_model = r.d_model, n_head = r.n_head, context = r.context, seed = seed,
                layers = E.layers(r.n_layers, m.special)}
  if not m.scale then return thinklab.model(base) end
  local dense = thinklab.model(base)
  -- Width a multiple of 4 x the head count: head size a multiple of 4 (RoPE pairs).
  local cfg = thinklab.dense_baseline{model = dense, by = "width", width_multiple = 4 * r.n_head,
                                      params = math.floor(m.scale * dense:param_count() + 0.5)}
  dense:close()
  cfg.tokenizer = tok
  cfg.seed = seed
  return thinklab.model(cfg)
end

function E.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- s quoted for the shell: inside single quotes, with each ' written as '\''.
function E.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function E.mkdir(path)
  local ok = os.execute("mkdir -p " .. E.q(path))
  if not ok then error("cannot create the folder " .. path, 0) end
end

function E.now()
  local h = io.popen("date +%s.%N")
  local t = h and tonumber(h:read("*l")) or os.time()
  if h then h:close() end
  return t
end

-- Runs a shell command, echoing it; returns true when it exited with 0.
function E.sh(cmd)
  print("+ " .. cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

-- One tab-separated summary line per finished run; the header is written
-- when the file is new.
E.summary_fields = {"model", "label", "seed", "params", "mflops_per_token", "steps", "tokens",
                    "train_loss", "val_topk", "ppl_topk", "val_causal", "frac_causal",
                    "val_calibrated", "wall_s", "log"}

-- A row replaces any earlier row of the same model and seed, so that running
-- again into the same folder never counts a run twice in the tables.
function E.append_summary(path, row)
  local other_rows, replaced = {}, false
  local old = io.open(path, "r")
  if old then
    for line in old:lines() do
      local model, _, seed = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)")
      if model == tostring(row.model) and seed == tostring(row.seed) then
        replaced = true
      else
        other_rows[#other_rows + 1] = line
      end
    end
    old:close()
  end
  if #other_rows == 0 then other_rows[1] = table.concat(E.summary_fields, "\t") end
  if replaced then
    print(string.format("   replacing the earlier row of %s seed %s in %s", row.model, row.seed, path))
  end
  local f = assert(io.open(path, "w"))
  f:write(table.concat(other_rows, "\n"), "\n")
  -- Floats keep every digit, so the tables computed from this file round once.
  local cells = {}
  for i, k in ipairs(E.summary_fields) do
    local v = row[k]
    if v == nil then cells[i] = "" elseif math.type(v) == "float" then cells[i] = string.format("%.17g", v)
    else cells[i] = tostring(v) end
  end
  f:write(table.concat(cells, "\t"), "\n")
  f:close()
end

function E.read_summary(path)
  local rows, header = {}, nil
  local f = io.open(path, "r")
  if not f then return rows end
  for line in f:lines() do
    local cells = {}
    for c in (line .. "\t"):gmatch("([^\t]*)\t") do cells[#cells + 1] = c end
    if not header then header = cells
    else
      local row = {}
      for i, k in ipairs(header) do row[k] = tonumber(cells[i]) or (cells[i] ~= "" and cells[i] or nil) end
      rows[#rows + 1] = row
    end
  end
  f:close()
  return rows
end

-- Returns the mean, the half-range (max - min) / 2 and the count of a list.
local function stats(values)
  local n, sum, lo, hi = 0, 0.0, math.huge, -math.huge
  for _, v in ipairs(values) do
    n = n + 1
    sum = sum + v
    lo = math.min(lo, v)
    hi = math.max(hi, v)
  end
  if n == 0 then return nil end
  return sum / n, (hi - lo) / 2, n
end

local function fmt(values, digits)
  local mean, half, n = stats(values)
  if not mean then return "" end
  if n == 1 then return string.format("%." .. digits .. "f", mean) end
  return string.format("%." .. digits .. "f ± %." .. digits .. "f", mean, half)
end

-- Returns how many final training steps the reported training loss averages:
-- the last tenth of a run's steps, at least one. analysis/compare_runs.py
-- averages the same window by default, so seeds.md and comparison.md agree.
function E.train_loss_window(steps)
  return math.max(1, steps // 10)
end

-- Describes the training-loss window of rows for a table note, such as
-- "the last 70 of 700 steps".
local function train_loss_window_text(rows)
  local steps = {}
  for _, r in ipairs(rows) do
    if type(r.steps) == "number" then steps[r.steps] = true end
  end
  local only, count = nil, 0
  for s in pairs(steps) do only, count = s, count + 1 end
  if count == 1 then
    return string.format("the last %d of %d steps", E.train_loss_window(only), only)
  end
  return "the last tenth of each run's steps"
end

-- Writes the per-model table (mean ± half-range over seeds) as Markdown and
-- CSV from the summary rows, in the order of `order` (model names).
function E.write_seed_table(rows, order, md_path, csv_path, title)
  local by = {}
  for _, r in ipairs(rows) do
    by[r.model] = by[r.model] or {rows = {}}
    table.insert(by[r.model].rows, r)
  end
  local md = {title and ("## " .. title .. "\n") or "",
              "Mean ± half the range over seeds (n = number of seeds). Validation loss in nats per token; " ..
              "causal = threshold routing at evaluation, with its realised selected fraction. " ..
              "Train loss: mean training loss over " .. train_loss_window_text(rows) ..
              ", the window analysis/compare_runs.py averages by default.\n",
              "| model | params | MFLOP/token | n | train loss | val loss top-k | ppl top-k | val loss causal | " ..
              "fraction causal | val loss calibrated | wall s/run |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"}
  local csv = {"model,params,mflops_per_token,n,train_loss_mean,val_topk_mean,val_topk_halfrange,ppl_topk_mean," ..
               "val_causal_mean,val_causal_halfrange,frac_causal_mean,val_calibrated_mean,wall_s_mean"}
  for _, name in ipairs(order) do
    local g = by[name]
    if g then
      local col = function(k)
        local out = {}
        for _, r in ipairs(g.rows) do if type(r[k]) == "number" then out[#out + 1] = r[k] end end
        return out
      end
      local first = g.rows[1]
      md[#md + 1] = string.format("| %s | %d | %.3f | %d | %s | %s | %s | %s | %s | %s | %s |", first.label,
                                  first.params, first.mflops_per_token, #g.rows, fmt(col("train_loss"), 4),
                                  fmt(col("val_topk"), 4), fmt(col("ppl_topk"), 3), fmt(col("val_causal"), 4),
                                  fmt(col("frac_causal"), 3), fmt(col("val_calibrated"), 4), fmt(col("wall_s"), 0))
      local m = function(k) local v = stats(col(k)) return v and string.format("%.6g", v) or "" end
      local h = function(k) local _, v = stats(col(k)) return v and string.format("%.6g", v) or "" end
      csv[#csv + 1] = table.concat({first.label, first.params, string.format("%.6g", first.mflops_per_token), #g.rows,
                                    m("train_loss"), m("val_topk"), h("val_topk"), m("ppl_topk"), m("val_causal"),
                                    h("val_causal"), m("frac_causal"), m("val_calibrated"), m("wall_s")}, ",")
    end
  end
  local f = assert(io.open(md_path, "w"))
  f:write(table.concat(md, "\n"), "\n")
  f:close()
  f = assert(io.open(csv_path, "w"))
  f:write(table.concat(csv, "\n"), "\n")
  f:close()
  return table.concat(md, "\n")
end

-- Trains every spec for every seed and appends each finished run to
-- summary_path. run(spec, seed, data, tok) trains one model and returns its
-- summary row. A failed run is reported on stderr and recorded in failures;
-- with keep_going false the script exits at the first failure. A run stopped
-- by SIGINT or SIGTERM ends the script regardless of keep_going. script
-- names the caller in messages.
function E.train_all(script, p, specs, seeds, summary_path, data_dir, run, failures)
  local ok, data, tok, desc = pcall(E.load_corpus, p.corpus, data_dir, p.bpe_vocab)
  if not ok then
    io.stderr:write(script .. ": loading the corpus failed: " .. tostring(data) .. "\n")
    os.exit(1)
  end
  print(desc)
  local t_all = E.now()
  for _, seed in ipairs(seeds) do
    for _, spec in ipairs(specs) do
      local ok_run, row = pcall(run, spec, seed, data, tok)
      if ok_run then
        E.append_summary(summary_path, row)
      elseif thinklab.interrupted() then
        -- Ctrl-C or SIGTERM: the run wrote its log and checkpoint; stop here
        -- instead of starting the next one.
        error(row, 0)
      else
        local msg = string.format("%s seed %d failed: %s", spec.label, seed, tostring(row))
        io.stderr:write(script .. ": " .. msg .. "\n")
        failures[#failures + 1] = msg
        if not p.keep_going then
          io.stderr:write(script .. ": stopping (keep_going=false)\n")
          os.exit(1)
        end
      end
      collectgarbage()
    end
  end
  print(string.format("\ntrained %d runs in %.0f s (%d failed)", #seeds * #specs - #failures, E.now() - t_all,
                      #failures))
end

-- Returns the finished runs of summary_path, or exits when there are none.
function E.finished_rows(script, summary_path)
  local rows = E.read_summary(summary_path)
  if #rows == 0 then
    io.stderr:write(script .. ": no finished runs in " .. summary_path .. "\n")
    os.exit(1)
  end
  return rows
end

-- Exits with status 1 after listing failures, if there are any.
function E.exit_on_failures(script, failures)
  if #failures > 0 then
    io.stderr:write(script .. ": " .. #failures .. " problem(s):\n  " .. table.concat(failures, "\n  ") .. "\n")
    os.exit(1)
  end
end

-- Trains model spec m with seed on data under the resolved sizes r, logs to
-- <o.out>/<m.name>_s<seed>.h5 and evaluates under top-k, causal and
-- calibrated routing (the last two for routed models). Returns the summary
-- row; raises an error when anything fails.
function E.train_run(m, seed, data, tok, r, o)
  local log = string.format("%s/%s_s%d.h5", o.out, m.name, seed)
  local t0 = E.now()
  local model = E.build(m, r, tok, seed)
  local s = model:summary{print = false}
  print(string.format("\n== %s, seed %d: %d parameters, %.3f MFLOP/token forward (T = %d), d_model %d",
                      m.label, seed, s.params, s.flops_per_token / 1e6, r.context, model:config().d_model))
  local tail, tail_sum, print_every = E.train_loss_window(r.steps), 0.0, math.max(1, r.steps // 10)
  -- A tenth of the steps, at least 1 and below the step count (0 for one step).
  local warmup = o.warmup > 0 and o.warmup or math.min(math.max(1, r.steps // 10), r.steps - 1)
  local tr = thinklab.trainer{
    model = model, data = data, steps = r.steps, batch_size = r.batch_size, context = r.context,
    optimizer = {kind = "adamw", lr = r.lr, weight_decay = 0.1},
    schedule = {kind = "cosine", warmup = warmup, min_lr = r.lr / 10},
    clip = 1.0, eval_every = r.eval_every, eval_batches = r.eval_batches, seed = seed,
    threads = o.threads, log = log, log_overwrite = true,
    log_grads_every = o.token_grads and math.max(1, r.steps // 4) or 0,
    progress_every = 0, callback_every = 1,
    callback = function(st)
      if st.step > r.steps - tail then tail_sum = tail_sum + st.loss end
      if st.step % print_every == 0 or st.step == st.total then
        print(string.format("  step %5d/%d  loss %.4f  %6.0f tok/s  eta %4.0f s%s", st.step, st.total, st.loss,
                            st.tokens_per_s, st.eta_s,
                            st.eval_loss and string.format("  val %.4f (step %d)", st.eval_loss,
                                                           st.eval_step) or ""))
      end
    end,
  }
  local final = tr:run()
  local row = {model = m.name, label = m.label, seed = seed, params = s.params,
               mflops_per_token = s.flops_per_token / 1e6, steps = final.step, tokens = final.tokens,
               log = log}
  row.train_loss = tail_sum / math.min(tail, final.step)
  row.val_topk = final.eval_loss
  row.ppl_topk = math.exp(final.eval_loss)
  if m.routed then
    local c = tr:evaluate{routing = "causal"}
    row.val_causal, row.frac_causal = c.loss, c.selected_fraction
    local cal = model:evaluate{data = data, routing = "calibrated", batch_size = r.batch_size,
                               context = r.context, batches = r.eval_batches, seed = seed}
    row.val_calibrated = cal.loss
    if m.name == "itt" and o.save_itt then tr:save(string.format("%s/%s_s%d.ckpt", o.out, m.name, seed)) end
  end
  tr:close()
  row.wall_s = E.now() - t0
  print(string.format("   %s seed %d: val %.4f (ppl %.3f) top-k%s, %.0f s", m.label, seed, row.val_topk,
                      row.ppl_topk,
                      row.val_causal and string.format(", %.4f causal (fraction %.3f), %.4f calibrated",
                                                       row.val_causal, row.frac_causal, row.val_calibrated) or "",
                      row.wall_s))
  model:close()
  return row
end

return E
