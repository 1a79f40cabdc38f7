-- The experiment scripts reject bad command-line values before they load a
-- corpus or train: one message naming the value, exit status 2, no traceback.
local p = thinklab.params{thinklab = "", text = "", fixtures = "", scratch = ""}
local H = dofile(arg[0]:match("^(.*)/") .. "/helpers.lua")
local experiments = p.fixtures .. "/../../../experiments"

local cases = {
  {"compare.lua", "steps=-5", "steps must be a whole number above 0"},
  {"compare.lua", "batch_size=-1", "batch_size must be a whole number above 0"},
  {"compare.lua", "lr=-1", "lr must be a number above 0"},
  {"compare.lua", "seeds=abc", "seeds must be whole numbers"},
  {"compare.lua", "setting=bogus", "setting must be small, quick or full"},
  {"compare.lua", "steps=abc", "override steps=abc: steps must be an integer"},
  {"ablations.lua", "steps=-5", "steps must be a whole number above 0"},
  {"elastic.lua", "context=-64", "context must be a whole number above 0"},
  {"elastic.lua", "seed=-1", "seed must be a whole number of 0 or more"},
  {"compare.lua", "threads=-1", "threads must be a whole number of 0 or more"},
  {"compare.lua", "threads=5000", "threads must be at most 4096"},
  {"compare.lua", "warmup=-5", "warmup must be a whole number of 0 or more"},
  {"compare.lua", "corpus=bogus", "corpus must be shakespeare, wikitext or kjv"},
  {"elastic.lua", "corpus=bogus", "corpus must be shakespeare, wikitext or kjv"},
  {"compare.lua", "seeds=1,,2", "seeds has an empty entry"},
  {"compare.lua", "seeds=-1", "seeds must be whole numbers of 0 or more"},
  {"compare.lua", "models=", "models is empty"},
  {"ablations.lua", "models=", "models is empty"},
  {"gradient_spikes.lua", "routing=bogus", "routing must be topk, causal or calibrated"},
  {"gradient_spikes.lua", "model=bogus", "model must be dense or itt"},
  {"gradient_spikes.lua", "steps=-5", "steps must be a whole number of 1 or more"},
  {"gradient_spikes.lua", "sequences=0", "sequences must be a whole number of 1 or more"},
  {"gradient_spikes.lua", "hard_quantile=2", "hard_quantile must lie in [0, 1]"},
  {"gradient_spikes.lua", "answer_tokens=99", "answer_tokens 99 must be at most seq_len 64"},
  {"quickstart.lua", "sample_tokens=-3", "sample_tokens must be 0 (no sample) or more, got -3"},
}
for _, c in ipairs(cases) do
  local script, arg_text, want = c[1], c[2], c[3]
  local out, code = H.run(p.thinklab .. " run " .. experiments .. "/" .. script .. " " .. arg_text)
  local label = script .. " " .. arg_text
  -- Status 2 from the scripts' own checks; the thinklab command's exit status
  -- for an override it rejects.
  H.check(code == 2 or (code ~= 0 and arg_text == "steps=abc"), label .. " exits with an error")
  H.check(H.contains(out, want), label .. " names the value (" .. out:gsub("\n.*", "") .. ")")
  H.check(not H.contains(out, "stack traceback"), label .. " prints no traceback")
  local _, lines = out:gsub("[^\n]+", "")
  H.check(lines == 1, label .. " prints only the error, so nothing started (" .. lines .. " lines)")
end

-- A results folder whose name contains a quote and shell syntax is created as
-- named, and the shell runs nothing from it. train=false analyze=false makes
-- compare.lua stop after creating it.
local odd = p.scratch .. "/it's; touch " .. p.scratch .. "/INJECTED; '"
os.remove(p.scratch .. "/INJECTED") -- left by an earlier failing run, if any
local out, code = H.run(p.thinklab .. " run " .. experiments .. "/compare.lua train=false analyze=false "
                        .. "'out=" .. odd:gsub("'", "'\\''") .. "'")
H.check(code == 0, "compare.lua with a quote in out exits 0 (" .. out:gsub("\n.*", "") .. ")")
local f = io.open(p.scratch .. "/INJECTED", "r")
H.check(f == nil, "a quote in out runs no shell command")
if f then f:close() end
local probe = io.open(odd .. "/probe", "w")
H.check(probe ~= nil, "the folder named in out exists")
if probe then probe:close() end

-- A one-step run gets a warm-up below its step count, and trains.
out, code = H.run(p.thinklab .. " run " .. experiments .. "/compare.lua steps=1 models=dense "
                  .. "seeds=1 analyze=false eval_batches=1 'out=" .. p.scratch .. "/one_step'")
H.check(code == 0, "compare.lua steps=1 trains (" .. out:gsub("\n.*", "") .. ")")
H.check(H.contains(out, "trained 1 runs"), "compare.lua steps=1 reports the run")

-- quick=true keeps a step count given beside it and sets the settings left at
-- their defaults (24 sequences instead of 64).
out, code = H.run(p.thinklab .. " run " .. experiments .. "/gradient_spikes.lua quick=true steps=3 "
                  .. "'out=" .. p.scratch .. "/spikes_quick'")
H.check(code == 0, "gradient_spikes.lua quick=true steps=3 runs (" .. out:gsub("\n.*", "") .. ")")
H.check(H.contains(out, "step 3/3"), "quick=true keeps steps=3")
H.check(H.contains(out, "24 sequences of 64 tokens"), "quick=true analyses 24 sequences")

-- quickstart.lua prints a sample after training, and none with sample_tokens=0.
local tiny = " steps=2 d_model=16 n_head=2 n_layers=1 context=32 batch_size=4 threads=1 "
for _, n in ipairs({0, 4}) do
  out, code = H.run(p.thinklab .. " run " .. experiments .. "/quickstart.lua" .. tiny
                    .. "sample_tokens=" .. n .. " data=" .. p.text)
  local label = "quickstart.lua sample_tokens=" .. n
  H.check(code == 0, label .. " runs (" .. out:gsub("\n.*", "") .. ")")
  H.check(H.contains(out, "trained 2 steps"), label .. " trains")
  H.check(H.contains(out, "---- sample ----") == (n > 0), label .. " prints a sample only for n > 0")
end

-- summary.tsv keeps every digit of a float, so the tables round once.
local E = dofile(experiments .. "/common.lua")
local tsv = p.scratch .. "/summary_digits.tsv"
os.remove(tsv)
local loss = 1.7954512345678901
E.append_summary(tsv, {model = "mod", label = "MoD", seed = 1, val_topk = loss})
local rows = E.read_summary(tsv)
H.check(#rows == 1 and rows[1].val_topk == loss,
        "summary.tsv gives back " .. tostring(rows[1] and rows[1].val_topk) .. " for " .. loss)

H.done()
