-- The module under Debian's stock lua5.4: require "thinklab" through
-- LUA_CPATH, a short training run, and errors that surface as Lua errors.
-- Usage: lua5.4 test_stock_lua.lua TEXT_FILE
local thinklab = require "thinklab"
local H = dofile(arg[0]:match("^(.*)/") .. "/helpers.lua")
local text = assert(arg[1], "usage: lua5.4 test_stock_lua.lua TEXT_FILE")

H.check(package.loaded.thinklab == thinklab and type(thinklab.version) == "string", "require returns the module")
H.check(rawget(_G, "thinklab") == nil, "require sets no global")
H.check(next(thinklab.overrides()) == nil, "no overrides outside the thinklab command")
local p = thinklab.params{steps = 30}
H.check(p.steps == 30, "params returns the defaults without overrides")

local plugins = thinklab.plugins()
H.check(#plugins >= 4, "plugins are found from the stock interpreter (" .. #plugins .. ")")

local c = thinklab.corpus{path = text, max_bytes = 50000}
local tok = thinklab.tokenizer{kind = "char", corpus = c}
local ds = c:encode(tok)
local m <close> = thinklab.model{tokenizer = tok, d_model = 32, n_head = 2, context = 32, n_layers = 2}
local before = m:evaluate{data = ds, batches = 4, batch_size = 8}
local steps = {}
local final = thinklab.train{model = m, data = ds, steps = p.steps, batch_size = 8, progress_every = 0,
                             optimizer = {lr = 3e-3}, eval_batches = 4, eval_every = 0, threads = 2,
                             callback_every = 10, callback = function(s) steps[#steps + 1] = s.step end}
-- Measured (2 threads, Release): 4.083 -> 3.214 nats after 30 steps; the
-- check requires a drop of 0.3.
print(string.format("loss %.4f -> %.4f", before.loss, final.eval_loss))
H.check(final.eval_loss < before.loss - 0.3, "validation loss falls by more than 0.3 nats")
H.check(table.concat(steps, ",") == "10,20,30", "callback runs inside the stock interpreter")

local ok, err = pcall(thinklab.model, {vocab_size = 10, d_model = -3, n_head = 2, context = 8, n_layers = 1})
H.check(not ok and err:find("model.d_model must be a positive integer, got -3", 1, true), "errors surface as Lua errors")
ok, err = pcall(thinklab.corpus, {path = "no_such_file.txt"})
H.check(not ok and err:find("not found", 1, true), "missing corpus surfaces as a Lua error")

H.done()
