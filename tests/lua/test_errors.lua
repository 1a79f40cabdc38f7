-- Every Lua-facing check: wrong types and ranges name the key, unknown keys
-- list the valid ones, and data problems give a clear message.
local p = thinklab.params{thinklab = "", text = "", fixtures = "", scratch = ""}
local H = dofile(arg[0]:match("^(.*)/") .. "/helpers.lua")
local E = H.expect_error

-- corpora
E("missing corpus", {"text file 'no_such_file.txt' not found", "check the path"},
  thinklab.corpus, {path = "no_such_file.txt"})
local empty = p.scratch .. "/empty.txt"
local f = assert(io.open(empty, "w")); f:close()
E("empty corpus", {"is empty"}, thinklab.corpus, {path = empty})
E("corpus without path", {"thinklab.corpus needs path"}, thinklab.corpus, {})
E("corpus folder", {"text file '" .. p.scratch .. "' is a directory: give the path of a file in it"},
  thinklab.corpus, {path = p.scratch})
E("tokenizer folder", {"tokenizer file '" .. p.scratch .. "' is a directory"},
  thinklab.load_tokenizer, p.scratch)
E("corpus unknown key", {"unknown key 'file'", "valid keys are: path, val_fraction, max_bytes"},
  thinklab.corpus, {file = p.text})
E("corpus val_fraction range", {"corpus.val_fraction must be in (0, 1), got 1.0"},
  thinklab.corpus, {path = p.text, val_fraction = 1.0})
E("corpus val_fraction zero", {"corpus.val_fraction must be in (0, 1), got 0"},
  thinklab.corpus, {path = p.text, val_fraction = 0})
E("corpus val_fraction negative", {"corpus.val_fraction must be in (0, 1), got -0.1"},
  thinklab.corpus, {path = p.text, val_fraction = -0.1})
E("corpus val_fraction above 1", {"corpus.val_fraction must be in (0, 1), got 1.5"},
  thinklab.corpus, {path = p.text, val_fraction = 1.5})
E("corpus max_bytes type", {"corpus.max_bytes must be a positive integer, got 'many'"},
  thinklab.corpus, {path = p.text, max_bytes = "many"})
E("corpus too small to split", {"leaves the training split empty"},
  thinklab.corpus, {path = p.text, max_bytes = 1})
E("corpus not a table", {"thinklab.corpus expects a table of options, got 42"}, thinklab.corpus, 42)
local latin1 = p.scratch .. "/latin1.txt"
f = assert(io.open(latin1, "wb")); f:write("caf\xe9 au lait, caf\xe9 noir\n"); f:close()
E("corpus not UTF-8", {"is not valid UTF-8 at byte offset 3"}, thinklab.corpus, {path = latin1})

local c = thinklab.corpus{path = p.text, max_bytes = 30000}

-- tokenizers
E("tokenizer without kind", {"thinklab.tokenizer.kind is required"}, thinklab.tokenizer, {text = "abc"})
E("tokenizer bad kind", {"thinklab.tokenizer.kind must be one of \"char\", \"byte\", \"bpe\", got 'word'"},
  thinklab.tokenizer, {kind = "word", text = "abc"})
E("tokenizer without text", {"needs exactly one of text"}, thinklab.tokenizer, {kind = "char"})
E("bpe vocab_size too small", {"thinklab.tokenizer.vocab_size must be an integer >= 257, got 100"},
  thinklab.tokenizer, {kind = "bpe", text = "abc", vocab_size = 100})
E("bpe out of pairs", {"ran out of pairs"}, thinklab.tokenizer, {kind = "bpe", text = "aaaa", vocab_size = 300})
E("char vocab_size", {"vocab_size applies to bpe only"}, thinklab.tokenizer, {kind = "char", text = "a", vocab_size = 5})
E("tokenizer corpus type", {"thinklab.tokenizer.corpus must be a corpus"}, thinklab.tokenizer, {kind = "char", corpus = "x"})
E("load missing tokenizer", {"no_such.tok"}, thinklab.load_tokenizer, p.scratch .. "/no_such.tok")
local saved_tok = thinklab.tokenizer{kind = "char", text = "abc"}
E("tokenizer save to an empty path", {"tokenizer:save: the tokenizer file path is empty",
                                      "give a file path such as 'tokenizer.txt'"},
  saved_tok.save, saved_tok, "")
E("model too large", {"could not allocate", "make the model smaller"}, thinklab.model,
  {vocab_size = 65, d_model = 1 << 20, n_head = 4, n_layers = 4, context = 64})
local abc = thinklab.tokenizer{kind = "char", text = "abc"}
E("unencodable text", {"character 'z' (byte 0x7a) at byte offset 2 is not in the char vocabulary",
                       "build the vocabulary from every text it encodes"}, abc.encode, abc, "abz")
E("unencodable corpus", {"cannot encode corpus", "with the char tokenizer", "training split"}, c.encode, c, abc)
E("decode bad id", {"tokenizer:decode ids[2] must be a token id in [0, 3), got 7"}, abc.decode, abc, {0, 7})

local tok = thinklab.tokenizer{kind = "char", corpus = c}
local ds = c:encode(tok)

-- models
local function model(extra)
  local t = {tokenizer = tok, d_model = 16, n_head = 2, context = 32, n_layers = 1}
  for k, v in pairs(extra) do t[k] = v end
  if extra.layers and not extra.n_layers then t.n_layers = nil end
  return thinklab.model(t)
end
E("negative d_model", {"model.d_model must be a positive integer, got -3"}, model, {d_model = -3})
E("float d_model", {"model.d_model must be a positive integer, got 16.5"}, model, {d_model = 16.5})
E("string n_head", {"model.n_head must be a positive integer, got 'two'"}, model, {n_head = "two"})
E("heads do not divide width", {"model.d_model 16 must be divisible by model.n_head 3"}, model, {n_head = 3})
E("odd head size with RoPE", {"head size 33 (d_model 66 / n_head 2) must be even for RoPE",
                              "set rope = \"none\""}, model, {d_model = 66, n_head = 2})
E("unknown model key", {"model: unknown key 'width'", "valid keys are: vocab_size, tokenizer, d_model, n_head, context"},
  model, {width = 3})
E("bad style", {"model.style must be one of \"llama\", \"gpt2\", got 'gpt3'"}, model, {style = "gpt3"})
E("bad rope", {"model.rope must be one of \"none\", \"interleaved\", \"half\""}, model, {rope = "full"})
E("tie_head type", {"model.tie_head must be a boolean, got 1"}, model, {tie_head = 1})
E("missing vocabulary", {"model needs vocab_size"}, thinklab.model, {d_model = 8, n_head = 2, context = 8, n_layers = 1})
E("vocab mismatch", {"model.vocab_size 10 differs from the tokenizer's vocabulary"}, model, {vocab_size = 10})
E("missing layers", {"model.n_layers is required"}, thinklab.model, {vocab_size = 10, d_model = 8, n_head = 2, context = 8})
E("layers not a list", {"model.layers must be a list of layer tables, got 'itt'"}, model, {n_layers = nil, layers = "itt"})
E("empty layers", {"model.layers is empty"}, model, {layers = {}})
E("n_layers disagrees with layers", {"model.n_layers 3 differs from the 1 entries of model.layers"},
  model, {n_layers = 3, layers = {{plugin = "transformer"}}})
E("layer without plugin", {"model.layers[1] (layer 0).plugin is required"}, model, {layers = {{steps = 2}}})
E("unknown plugin", {"model.layers[1] (layer 0): plugin 'nosuch' not found"}, model, {layers = {{plugin = "nosuch"}}})
E("unknown layer option", {"model.layers[2] (layer 1) (plugin 'itt')", "no option 'stpes'",
                           "valid options: steps, ratios, alpha"},
  model, {layers = {{plugin = "transformer"}, {plugin = "itt", stpes = 3}}})
E("layer option type", {"model.layers[1] (layer 0) (plugin 'itt')", "'steps' expects type int"},
  model, {layers = {{plugin = "itt", steps = "3"}}})
E("layer option range", {"(plugin 'itt')", "steps"}, model, {layers = {{plugin = "itt", steps = 40}}})
E("layer enum choice", {"(plugin 'mod')", "routing"}, model, {layers = {{plugin = "mod", routing = "random"}}})
E("layer option function", {"model.layers[1] (layer 0).steps must be a boolean, number, string or list of numbers, got a function"},
  model, {layers = {{plugin = "itt", steps = print}}})
E("layer list too long", {"has 17 entries; a list option holds at most 16"},
  model, {layers = {{plugin = "itt", ratios = {1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1}}}})

-- patterns
E("pattern without n", {"pattern.n is required"}, thinklab.pattern, {default = {plugin = "transformer"}})
E("pattern without default", {"pattern.default is required"}, thinklab.pattern, {n = 2})
E("pattern unknown key", {"pattern: unknown key 'every'", "valid keys are: n, default, odd, even, at"},
  thinklab.pattern, {n = 2, default = {plugin = "transformer"}, every = 2})
E("pattern at out of range", {"pattern.at: key 5 is not a layer index in [0, 3)"},
  thinklab.pattern, {n = 3, default = {plugin = "transformer"}, at = {[5] = {plugin = "itt"}}})

local m = model({})
local itt = model({layers = {{plugin = "itt", steps = 3}}})

-- training configuration and data sizes
local function trainer(extra)
  local t = {model = m, data = ds, steps = 4, batch_size = 2, context = 32, progress_every = 0, eval_batches = 1}
  for k, v in pairs(extra) do t[k] = v end
  return thinklab.trainer(t)
end
E("trainer unknown key", {"trainer: unknown key 'lr'", "valid keys are: model, data, batch_size"}, trainer, {lr = 1})
E("trainer model type", {"trainer.model must be a model (from thinklab.model), got 'm'"}, trainer, {model = "m"})
E("trainer data type", {"trainer.data must be a dataset"}, trainer, {data = c})
E("log_token_seqs above batch_size", {"trainer.log_token_seqs 3 is more than batch_size 2: it counts " ..
                                      "sequences of each batch; give at most 2"},
  trainer, {log_token_seqs = 3})
E("clip nan", {"trainer.clip must be a finite number, got nan"}, trainer, {clip = 0/0})
E("batch_size zero", {"trainer.batch_size must be a positive integer, got 0"}, trainer, {batch_size = 0})
E("steps and tokens", {"give steps or tokens"}, trainer, {tokens = 1000})
E("optimizer unknown key", {"trainer.optimizer: unknown key 'lrr'", "valid keys are: kind, lr, beta1"}, trainer, {optimizer = {lrr = 1}})
E("optimizer lr type", {"trainer.optimizer.lr must be a finite number, got 'fast'"}, trainer, {optimizer = {lr = "fast"}})
E("optimizer kind", {"trainer.optimizer.kind must be one of \"adamw\", \"sgd\""}, trainer, {optimizer = {kind = "adam"}})
E("schedule kind", {"trainer.schedule.kind must be one of \"constant\", \"cosine\""}, trainer, {schedule = {kind = "linear"}})
E("warmup too long", {"trainer.schedule.warmup 10 must be less than the 4 training steps"}, trainer, {schedule = {warmup = 10}})
E("log_routing_every negative", {"trainer.log_routing_every"}, trainer, {log_routing_every = -1})
E("min_lr above lr", {"trainer.schedule.min_lr 0.01 is above trainer.optimizer.lr 0.001",
                      "lower min_lr or raise lr"},
  trainer, {optimizer = {lr = 1e-3}, schedule = {min_lr = 1e-2}})
E("lr below the default min_lr", {"trainer.optimizer.lr 0 is below trainer.schedule.min_lr",
                                  "defaults to 3e-05", "set schedule = {min_lr = 0} or lower"},
  trainer, {optimizer = {lr = 0}})
E("log in a missing folder", {"cannot create run log '" .. p.scratch .. "/nodir/x.h5': folder '" ..
                              p.scratch .. "/nodir' does not exist; create it or choose another path"},
  trainer, {log = p.scratch .. "/nodir/x.h5"})
local existing_log = p.scratch .. "/existing_log.h5"
os.remove(existing_log)
trainer({log = existing_log}):close()
E("log over an existing log", {"run log '" .. existing_log .. "' already exists; choose a new path, or " ..
                               "replace it with log_overwrite = true"}, trainer, {log = existing_log})
os.remove(existing_log)
E("clip negative", {"trainer.clip must be >= 0, got -1"}, trainer, {clip = -1})
E("callback type", {"trainer.callback must be a function(stats), got 'f'"}, trainer, {callback = "f"})
E("context longer than the model", {"trainer.context 64 is longer than the model's context 32"}, trainer, {context = 64})
local tiny_c = thinklab.corpus{path = p.text, max_bytes = 300}
local tiny_ds = tiny_c:encode(thinklab.tokenizer{kind = "char", corpus = tiny_c})
local tiny_m = thinklab.model{tokenizer = tiny_ds:tokenizer(), d_model = 16, n_head = 2, context = 64, n_layers = 1}
E("context longer than the data", {"context 64 needs at least 65 tokens, but the validation split has 30"},
  thinklab.trainer, {model = tiny_m, data = tiny_ds, steps = 2, context = 64})
E("context longer than the training data", {"context 300 needs at least 301 tokens, but the training split has 270"},
  thinklab.trainer, {model = thinklab.model{tokenizer = tiny_ds:tokenizer(), d_model = 16, n_head = 2, context = 512, n_layers = 1},
                     data = tiny_ds, steps = 2, context = 300})
E("batch that cannot fit", {"needs an estimated", "GiB of activations", "reduce batch_size or context"},
  trainer, {batch_size = 1000000000})
E("vocabulary larger than the model's", {"the dataset's vocabulary", "is larger than the model's vocab_size (10)"},
  thinklab.trainer, {model = thinklab.model{vocab_size = 10, d_model = 8, n_head = 2, context = 8, n_layers = 1},
                     data = ds, steps = 2, context = 8})

-- an error in the callback stops training with the message, and the
-- trainer, model and data stay usable
local calls = 0
local tr = trainer({steps = 6, callback_every = 1, callback = function(s)
  calls = calls + 1
  if s.step == 3 then error("stop here") end
end})
E("callback error", {"trainer:run: the callback failed at step 3", "test_errors.lua", "stop here"}, tr.run, tr)
for _, case in ipairs{{"halt", "'halt'"}, {"Stop", "'Stop'"}, {0, "0"}, {{}, "a table"}} do
  local returning = trainer({steps = 4, callback_every = 2, callback = function() return case[1] end})
  E("callback returning " .. case[2], {"the callback failed at step 2", "the callback returned " .. case[2] ..
    "; return false or \"stop\" to end the run, or nothing (or true) to continue"}, returning.run, returning)
  returning:close()
end
H.check(calls == 3 and tr:step_index() == 3, "the run stopped right after the failing callback")
H.check(tr:step() > 0 and tr:step_index() == 4, "the trainer can step again after a callback error")
H.check(m:evaluate{data = ds, batches = 1, batch_size = 1}.loss > 0, "the model still evaluates")

-- evaluation and generation
E("evaluate routing", {"evaluate.routing must be one of \"topk\", \"causal\", \"calibrated\", got 'random'"},
  m.evaluate, m, {data = ds, routing = "random"})
E("evaluate without data", {"evaluate.data must be a dataset"}, m.evaluate, m, {})
E("evaluate context too long", {"evaluate.context must be at most 32, got 33"}, m.evaluate, m, {data = ds, context = 33})
E("evaluate unknown key", {"evaluate: unknown key 'n_batches'"}, m.evaluate, m, {data = ds, n_batches = 3})
E("generate empty prompt", {"generate.prompt is empty"}, m.generate, m, {prompt = ""})
E("generate unencodable prompt", {"generate.prompt", "character '~' (byte 0x7e)"}, m.generate, m, {prompt = "~"})
E("generate bad temperature", {"generate.temperature must be in [0, 1e+06], got -1"}, m.generate, m, {prompt = "a", temperature = -1})
E("generate bad top_k", {"generate.top_k must be at most"}, m.generate, m, {prompt = "a", top_k = 100000})
E("generate bad id", {"generate.prompt[1] must be a token id"}, m.generate, m, {prompt = {-1}})
E("generate text without tokenizer", {"a text prompt needs a tokenizer"},
  thinklab.model{vocab_size = 10, d_model = 8, n_head = 2, context = 8, n_layers = 1}.generate,
  thinklab.model{vocab_size = 10, d_model = 8, n_head = 2, context = 8, n_layers = 1}, {prompt = "a"})
E("set_ratios on a dense model", {"the model has no layer with routing ratios"}, m.set_ratios, m, {ratios = {0.5}})
E("set_ratios range", {"model:set_ratios.ratios[2] must be a number in [0, 1], got 1.5"}, itt.set_ratios, itt, {ratios = {0.5, 1.5}})
E("set_ratios count", {"layer 0", "2 routed steps"}, itt.set_ratios, itt, {ratios = {0.5, 0.5, 0.5}})
E("set_ratios layer without ratios", {"layer 0 (plugin 'transformer') has no routing ratios"}, m.set_ratios, m, {ratios = {0.5}, layer = 0})

-- checkpoints
E("load missing checkpoint", {"trainer:load", "no_such.h5"}, tr.load, tr, p.scratch .. "/no_such.h5")
local other = thinklab.trainer{model = model({d_model = 32}), data = ds, steps = 2, batch_size = 2, context = 32,
                               progress_every = 0, eval_batches = 1}
local ck = p.scratch .. "/small.h5"
tr:save(ck)
E("load checkpoint of another architecture", {"trainer:load"}, other.load, other, ck)
-- The same model and vocabulary size, but a char tokenizer built from text
-- where '~' replaces 'e', so every id from 'e' up decodes to another character.
local swapped = p.scratch .. "/swapped.txt"
f = assert(io.open(swapped, "w"))
f:write((string.gsub(c:train_text() .. c:val_text(), "e", "~")))
f:close()
local c2 = thinklab.corpus{path = swapped}
local tok2 = thinklab.tokenizer{kind = "char", corpus = c2}
H.check(tok2:vocab_size() == tok:vocab_size(), "the swapped tokenizer has the same vocabulary size")
local retokenized = thinklab.trainer{model = model({tokenizer = tok2}), data = c2:encode(tok2), steps = 2,
                                     batch_size = 2, context = 32, progress_every = 0, eval_batches = 1}
E("load checkpoint of another tokenizer", {"trainer:load", "was trained with another tokenizer",
  "(\"char\", " .. tok:vocab_size() .. " tokens, fingerprint", "thinklab.load_tokenizer"},
  retokenized.load, retokenized, ck)
local same_tok = thinklab.trainer{model = model({}), data = ds, steps = 10, batch_size = 2, context = 32,
                                  progress_every = 0, eval_batches = 1}
H.check(same_tok:load(ck) == tr:step_index(), "a checkpoint of the same tokenizer loads")
E("new run over an existing checkpoint", {ck, "already exists", "set resume = '" .. ck .. "'",
  "checkpoint_overwrite = true"}, trainer, {checkpoint = ck})
E("checkpoint_overwrite type", {"checkpoint_overwrite"}, trainer, {checkpoint = ck, checkpoint_overwrite = "yes"})
local replacing = trainer({checkpoint = ck, checkpoint_overwrite = true})
H.check(replacing:config().checkpoint_overwrite == true, "checkpoint_overwrite = true accepts the existing checkpoint")
replacing:close()
local garbage = p.scratch .. "/garbage_checkpoint.h5"
local fh = assert(io.open(garbage, "w"))
fh:write("not hdf5\n")
fh:close()
E("load a file that is not a checkpoint", {"trainer:load", garbage, "not a checkpoint"}, tr.load, tr, garbage)
E("save over a file that is not a checkpoint", {garbage, "not a thinklab checkpoint", "choose another path"},
  tr.save, tr, garbage)
fh = assert(io.open(garbage, "r"))
H.check(fh:read("a") == "not hdf5\n", "the refused save kept the file")
fh:close()
os.remove(garbage)

-- closing order: closing a model closes its trainers
local m2 = model({})
local tr2 = trainer({model = m2})
m2:close()
E("trainer of a closed model", {"trainer:step: the trainer was closed"}, tr2.step, tr2)
local ds3 = c:encode(tok)
local tr3 = trainer({data = ds3})
ds3:close()
E("trainer of a closed dataset", {"trainer:run: the trainer was closed"}, tr3.run, tr3)

H.done()
