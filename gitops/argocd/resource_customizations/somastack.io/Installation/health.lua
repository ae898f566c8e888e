-- Argo CD health of a SomaStack object (every kind of somastack.io reads
-- the same conditions; docs/gitops.md). The operator keeps the conditions
-- kstatus reads: Ready from the first reconcile, Reconciling while it works,
-- Stalled for a failure that stays until something changes. A Ready=False
-- that is neither waits for a person (an approval, a kill switch release):
-- Argo CD's Suspended. So do a drill or project suspended by its spec.
local hs = { status = "Progressing", message = "Waiting for the operator to report a status" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  found[c.type] = c
end
local function says(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end
local stalled, reconciling, ready = found["Stalled"], found["Reconciling"], found["Ready"]
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = says(stalled) }
end
if reconciling ~= nil and reconciling.status == "True" then
  return { status = "Progressing", message = says(reconciling) }
end
if ready == nil then
  return hs
end
if ready.status == "True" then
  if ready.reason == "Suspended" then
    return { status = "Suspended", message = says(ready) }
  end
  return { status = "Healthy", message = says(ready) }
end
if ready.status == "False" then
  return { status = "Suspended", message = says(ready) }
end
return { status = "Progressing", message = says(ready) }
