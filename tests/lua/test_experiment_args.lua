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
  {"compare.lua", "steps=abc", "override steps=abc: steps must be a number"},
  {"ablations.lua", "steps=-5", "steps must be a whole number above 0"},
  {"elastic.lua", "context=-64", "context must be a whole number above 0"},
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

H.done()
