-- The thinklab command: version, help, threads, plugins, script errors and
-- command-line overrides, each run as a child process.
local p = thinklab.params{thinklab = "", text = "", fixtures = "", scratch = ""}
local H = dofile(arg[0]:match("^(.*)/") .. "/helpers.lua")
local tl, fx = p.thinklab, p.fixtures

local out, code = H.run(tl .. " --version")
H.check(code == 0 and H.contains(out, "thinklab " .. thinklab.version), "--version prints the version")

out, code = H.run(tl .. " --help")
H.check(code == 0 and H.contains(out, "run SCRIPT") and H.contains(out, "plugins"), "--help lists the commands")

out, code = H.run(tl)
H.check(code == 2 and H.contains(out, "usage:"), "no command prints usage and exits 2")

out, code = H.run(tl .. " frobnicate")
H.check(code == 2 and H.contains(out, "unknown command 'frobnicate'"), "unknown command exits 2")

out, code = H.run(tl .. " threads")
H.check(code == 0 and H.contains(out, "cores"), "threads describes the thread setting")

out, code = H.run(tl .. " plugins")
H.check(code == 0, "plugins exits 0")
for _, want in ipairs{"transformer", "itt", "loop", "mod", "steps", "ratios", "capacity",
                      "default 4", "range [1, 16]", "one of topk, topk_aux, causal"} do
  H.check(H.contains(out, want), "plugins listing contains '" .. want .. "'")
end

-- A syntax error: file:line, non-zero exit, no traceback of the loader.
out, code = H.run(tl .. " run " .. fx .. "/syntax_error.lua")
H.check(code ~= 0, "syntax error exits non-zero")
H.check(H.contains(out, "syntax_error.lua:3:"), "syntax error names file:line (" .. out:gsub("\n.*", "") .. ")")

-- A runtime error: file:line and a traceback through the script's functions.
out, code = H.run(tl .. " run " .. fx .. "/runtime_error.lua")
H.check(code ~= 0, "runtime error exits non-zero")
H.check(H.contains(out, "runtime_error.lua:2: attempt to index a nil value"), "runtime error names file:line")
H.check(H.contains(out, "stack traceback:"), "runtime error prints a traceback")
H.check(H.contains(out, "in upvalue 'inner'") or H.contains(out, "in local 'inner'") or
        H.contains(out, "in function 'inner'"), "traceback names the failing function")
H.check(H.contains(out, "runtime_error.lua:10: in main chunk"), "traceback reaches the main chunk")

out, code = H.run(tl .. " run " .. fx .. "/does_not_exist.lua")
H.check(code ~= 0 and H.contains(out, "does_not_exist.lua"), "missing script exits non-zero naming it")

-- Overrides take the type of the declared default.
out, code = H.run(tl .. " run " .. fx .. "/params.lua")
H.check(code == 0, "params script runs without overrides")
H.check(H.contains(out, "steps\tinteger\t100") and H.contains(out, "lr\tfloat\t0.0003") and
        H.contains(out, "name\tstring\trun") and H.contains(out, "flags\tboolean\tfalse") and
        H.contains(out, "list\tlist\tfloat:0.5,float:0.5"), "defaults pass through unchanged")

out, code = H.run(tl .. " run " .. fx .. "/params.lua steps=7 lr=1e-2 name=42 flags=true list=1,0.25,3 words=x,y")
H.check(code == 0, "params script runs with overrides")
H.check(H.contains(out, "steps\tinteger\t7"), "integer override")
H.check(H.contains(out, "lr\tfloat\t0.01"), "float override")
H.check(H.contains(out, "name\tstring\t42"), "string default keeps '42' a string")
H.check(H.contains(out, "flags\tboolean\ttrue"), "boolean override")
H.check(H.contains(out, "list\tlist\tfloat:1.0,float:0.25,float:3.0"), "number list override takes the element type")
H.check(H.contains(out, "words\tlist\tstring:x,string:y"), "string list override")

out, code = H.run(tl .. " run " .. fx .. "/params.lua lr=1")
H.check(code == 0 and H.contains(out, "lr\tfloat\t1.0"), "integer text for a float default gives a float")

out, code = H.run(tl .. " run " .. fx .. "/params.lua steps=1e3")
H.check(code == 0 and H.contains(out, "steps\tinteger\t1000"), "integral float accepted for an integer")

out, code = H.run(tl .. " run " .. fx .. "/params.lua stepz=3")
H.check(code ~= 0, "unknown override exits non-zero")
H.check(H.contains(out, "unknown override 'stepz'") and
        H.contains(out, "flags, list, lr, name, steps, words"), "unknown override lists the declared keys")

out, code = H.run(tl .. " run " .. fx .. "/params.lua steps=2.5")
H.check(code ~= 0 and H.contains(out, "steps must be an integer"), "fractional value for an integer names the key")
H.check(not H.contains(out, "stack traceback"), "a bad override prints its message without a traceback")
out, code = H.run(tl .. " run " .. fx .. "/caught_usage_error.lua steps=x")
H.check(code ~= 0 and H.contains(out, "a later failure"), "a later error after a caught bad override fails the run")
H.check(H.contains(out, "stack traceback:"), "a later error after a caught bad override keeps its traceback")
out, code = H.run(tl .. " run " .. fx .. "/params.lua lr=1e999")
H.check(code ~= 0 and H.contains(out, "override lr=1e999: lr must be a finite number (default 0.0003)"),
        "an override that overflows to infinity is rejected")
out, code = H.run(tl .. " run " .. fx .. "/params.lua list=0.5,-1e400")
H.check(code ~= 0 and H.contains(out, "override list[2]=-1e400: list[2] must be a finite number"),
        "a list element that overflows to infinity is rejected")
out, code = H.run(tl .. " run " .. fx .. "/params.lua lr=fast")
H.check(code ~= 0 and H.contains(out, "override lr=fast: lr must be a finite number (default 0.0003)"),
        "text for a number names the key")
for _, word in ipairs{"nan", "inf", "-inf"} do
  out, code = H.run(tl .. " run " .. fx .. "/params.lua lr=" .. word)
  H.check(code ~= 0 and H.contains(out, "override lr=" .. word .. ": lr must be a finite number (default 0.0003)"),
          "lr=" .. word .. " asks for a finite number")
end
out, code = H.run(tl .. " run " .. fx .. "/params.lua steps=abc")
H.check(code ~= 0 and H.contains(out, "override steps=abc: steps must be an integer (default 100)"),
        "text for an integer asks for an integer")
out, code = H.run(tl .. " run " .. fx .. "/params.lua flags=yes")
H.check(code ~= 0 and H.contains(out, "flags must be true or false"), "bad boolean names the key")
out, code = H.run(tl .. " run " .. fx .. "/params.lua list=0.5,x")
H.check(code ~= 0 and H.contains(out, "list[2]"), "bad list element names the key and index")
out, code = H.run(tl .. " run " .. fx .. "/params.lua steps")
H.check(code ~= 0 and H.contains(out, "argument 'steps' is not KEY=VALUE"), "argument without '=' is rejected")
out, code = H.run(tl .. " run " .. fx .. "/params.lua steps=1 steps=2")
H.check(code ~= 0 and H.contains(out, "override 'steps' given twice"), "repeated override is rejected")
out, code = H.run(tl .. " run " .. fx .. "/no_params.lua steps=1")
H.check(code ~= 0 and H.contains(out, "never called thinklab.params"), "overrides to a script without params are rejected")

-- An error inside the training callback stops the run with its message.
out, code = H.run(tl .. " run " .. fx .. "/callback_error.lua text=" .. p.text)
H.check(code ~= 0, "callback error exits non-zero")
H.check(H.contains(out, "the callback failed at step 4") and H.contains(out, "callback_error.lua:9: callback gave up"),
        "callback error names the step and the Lua error")

-- A batch that no shard count divides turns the shards off, and a line names the fix.
out, code = H.run(tl .. " run " .. fx .. "/short_run.lua text=" .. p.text .. " batch_size=3")
H.check(code == 0, "odd batch on 2 threads runs")
H.check(H.contains(out, "batch_size 3 does not split evenly over 2 threads, so data-parallel shards are off") and
        H.contains(out, "batch_size 2 or 4 would split into 2 shards"), "odd batch names the shards it loses and the fix")
out, code = H.run(tl .. " run " .. fx .. "/short_run.lua text=" .. p.text .. " batch_size=4")
H.check(code == 0 and H.contains(out, "2 data-parallel shards of 2 sequences") and
        not H.contains(out, "shards are off"), "even batch runs as shards")

-- A callback that stops the run on a progress step gets one final line.
local function count(text, fragment)
  local n, at = 0, 1
  while true do
    local i = text:find(fragment, at, true)
    if not i then return n end
    n, at = n + 1, i + 1
  end
end
out, code = H.run(tl .. " run " .. fx .. "/short_run.lua text=" .. p.text .. " stop_at=10")
H.check(code == 0, "run stopped by the callback exits 0")
H.check(count(out, "step 10/20") == 1, "stopped run prints step 10/20 once")
H.check(H.contains(out, "step 5/20") and H.contains(out, "elapsed"), "stopped run prints earlier steps and elapsed")
out, code = H.run(tl .. " run " .. fx .. "/short_run.lua text=" .. p.text)
H.check(code == 0 and count(out, "step 20/20") == 1, "full run prints its last step once")
H.check(H.contains(out, "interrupted: nil"), "thinklab.interrupted() is nil without a signal")

-- SIGINT, SIGTERM or SIGHUP during a run: the run stops before its next
-- step with its checkpoint and log written, the script ends, and the exit
-- status is the shell's for the signal.
for _, case in ipairs{{"INT", 130}, {"TERM", 143}, {"HUP", 129}} do
  local sig, status = case[1], case[2]
  local ck, log = p.scratch .. "/cli_signal.ckpt.h5", p.scratch .. "/cli_signal.h5"
  os.remove(ck)
  os.remove(log)
  local base = tl .. " run " .. fx .. "/short_run.lua text=" .. p.text .. " checkpoint=" .. ck
  out, code = H.run(base .. " log=" .. log .. " signal_at=10 signal=" .. sig)
  H.check(code == status, "SIG" .. sig .. " exits with status " .. status .. ", got " .. tostring(code))
  H.check(H.contains(out, "stopping before the next training step"), "SIG" .. sig .. " is acknowledged at once")
  H.check(H.contains(out, "interrupted by SIG" .. sig .. " after step 10 of 20; the log '" .. log ..
                     "' contains every step up to there; the checkpoint '" .. ck .. "' contains step 10"),
          "SIG" .. sig .. " names the step, the log and the checkpoint")
  H.check(not H.contains(out, "stack traceback"), "SIG" .. sig .. " prints no traceback")
  H.check(not H.contains(out, "train returned"), "SIG" .. sig .. " ends the script")
  out, code = H.run(base .. " resume=" .. ck .. " log=" .. p.scratch .. "/cli_signal_resumed.h5")
  H.check(code == 0 and H.contains(out, "step 15/20") and not H.contains(out, "step 10/20"),
          "the checkpoint written on SIG" .. sig .. " resumes at step 10")
  os.remove(ck)
  os.remove(log)
  os.remove(p.scratch .. "/cli_signal_resumed.h5")
end

-- Ctrl-C also ends a reader of the run's output, such as tee. Here the reader
-- quits after step 5, and the signal comes after step 10: the run's next
-- message meets a closed pipe, and the run still saves its checkpoint.
do
  local ck, status = p.scratch .. "/cli_pipe.ckpt.h5", p.scratch .. "/cli_pipe.status"
  os.remove(ck)
  os.remove(status)
  local run = tl .. " run " .. fx .. "/short_run.lua text=" .. p.text .. " checkpoint=" .. ck ..
              " signal_at=10 signal=INT signal_delay=0.5"
  H.run("( " .. run .. "; echo $? >" .. status .. " ) 2>&1 | head -n 2 >/dev/null")
  local f = io.open(status, "r")
  local got = f and f:read("l")
  if f then f:close() end
  H.check(got == "130", "SIGINT with a closed output pipe exits with status 130, got " .. tostring(got))
  H.check(io.open(ck, "r") ~= nil, "SIGINT with a closed output pipe writes the checkpoint")
  os.remove(ck)
  os.remove(status)
end

-- A resume names the training settings that changed, but not the output paths.
local ck, first, second = p.scratch .. "/cli_resume.ckpt.h5", p.scratch .. "/cli_first.h5",
                          p.scratch .. "/cli_second.h5"
os.remove(ck)
os.remove(first)
os.remove(second)
local run = tl .. " run " .. fx .. "/short_run.lua text=" .. p.text .. " checkpoint=" .. ck
out, code = H.run(run .. " steps=10 log=" .. first)
H.check(code == 0, "first run writes a checkpoint")
out, code = H.run(run .. " steps=15 resume=" .. ck .. " log=" .. second)
H.check(code == 0, "resume with more steps runs")
H.check(H.contains(out, "this run uses its own: steps"), "resume names the changed steps")
H.check(not H.contains(out, "log_path"), "resume does not count the new log as a training setting")
H.check(H.contains(out, "run log '" .. second .. "' is new and starts after step 10, the checkpoint's"),
        "resume into a new log says where the new log starts")

-- A resume into the run's own log continues it. From an earlier checkpoint
-- it first removes the rows of the steps that the run logs again.
local function copy(from, to)
  local i, o = assert(io.open(from, "rb")), assert(io.open(to, "wb"))
  o:write(i:read("a"))
  i:close()
  o:close()
end
local ck10 = p.scratch .. "/cli_resume10.ckpt.h5"
os.remove(ck)
os.remove(first)
out, code = H.run(run .. " steps=10 log=" .. first)
H.check(code == 0, "first run of the continued log")
copy(ck, ck10)
out, code = H.run(run .. " steps=15 resume=" .. ck .. " log=" .. first)
H.check(code == 0, "resume into the run's own log runs")
H.check(H.contains(out, "continuing run log '" .. first .. "' at step 10; no rows of later steps to remove"),
        "resume at the log's end names the log and removes nothing")
local run10 = tl .. " run " .. fx .. "/short_run.lua text=" .. p.text .. " checkpoint=" .. ck10
out, code = H.run(run10 .. " steps=15 resume=" .. ck10 .. " log=" .. first)
H.check(code == 0, "resume from the earlier checkpoint into the continued log runs")
H.check(H.contains(out, "at step 10; removed the rows of later steps, which this run logs again: train 5"),
        "resume from an earlier checkpoint names the removed training rows")
os.remove(ck)
os.remove(ck10)
os.remove(first)
os.remove(second)

H.done()
