"""The dashboard's HTML, CSS and JavaScript: one self-contained page, no external assets.

The page renders from ``/_hub/api/status`` and polls it (every 3 s, every second while an
environment is changing state, paused while the tab is hidden); idle timers tick locally between
polls. Every value is inserted with ``textContent``, never as HTML. Actions are ``fetch`` POSTs
carrying the session's CSRF token from the page's ``<meta name="hub-csrf">``; "Log out" is a plain
form POSTing the same token to ``/_hub/logout``. Users are shown by their safe name
(``hubcontrol.names.safe_name``: ``[a-z0-9-]``, different for names that only look alike), with
the provider's name beside it when that differs; a template switch
logs in again with ``/_hub/login?template=NAME`` (the seed's way to pick one), so the new session
carries the template the request path keeps the environment on.
"""

from __future__ import annotations

import html
from string import Template

from hubproxy.auth import identity

STYLE = """
:root{--bg:#f4f6fa;--card:#fff;--text:#1b2233;--muted:#667085;--line:#e4e7ee;--accent:#2457d6;
--accent-ink:#fff;--ok:#12805c;--okbg:#e3f6ee;--warn:#a15c00;--warnbg:#fff3dc;--bad:#b42318;
--badbg:#fde8e6;--info:#1f5fbf;--infobg:#e5eefc;--sleep:#5b45c2;--sleepbg:#eeeafd;--off:#586074;
--offbg:#eceef3;--shadow:0 1px 2px #1018280d,0 2px 10px #1018280a}
@media (prefers-color-scheme:dark){:root{--bg:#0f131b;--card:#171c26;--text:#e7eaf0;--muted:#98a2b3;
--line:#273041;--accent:#5b8cff;--accent-ink:#0b1020;--okbg:#0f2e24;--ok:#4cd3a0;--warnbg:#3a2a0c;
--warn:#ffc062;--badbg:#3b1513;--bad:#ff8a80;--infobg:#142542;--info:#8fb4ff;--sleepbg:#241d45;
--sleep:#b9a8ff;--offbg:#222837;--off:#a3abbd;--shadow:none}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);
color:var(--text)}
header{position:sticky;top:0;z-index:2;background:var(--card);border-bottom:1px solid var(--line)}
.bar{max-width:72rem;margin:0 auto;padding:.7rem 1rem;display:flex;gap:.75rem;align-items:center}
.logo{font-weight:700;font-size:1.05rem;letter-spacing:.01em;display:flex;align-items:center;gap:.5rem}
.logo i{width:1.4rem;height:1.4rem;border-radius:.4rem;background:linear-gradient(135deg,var(--accent),#7c4dff);
display:inline-block}
.who{margin-left:auto;display:flex;align-items:center;gap:.6rem;color:var(--muted);font-size:.9rem;min-width:0}
.who form{display:inline;margin:0}
.who b{color:var(--text);font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
a{color:var(--accent)}
main{max-width:72rem;margin:0 auto;padding:1rem}
.summary{display:flex;flex-wrap:wrap;gap:.5rem;margin:.25rem 0 1rem;align-items:center}
.chip{background:var(--card);border:1px solid var(--line);border-radius:999px;padding:.25rem .7rem;
font-size:.85rem;color:var(--muted)}
.chip b{color:var(--text)}
.filter{margin-left:auto;flex:1 1 12rem;max-width:18rem;padding:.45rem .7rem;border-radius:.5rem;
border:1px solid var(--line);background:var(--card);color:var(--text);font:inherit}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(21rem,1fr));gap:1rem}
@media (max-width:34rem){.grid{grid-template-columns:1fr}.bar{padding:.6rem .75rem}main{padding:.75rem}
.filter{max-width:none;flex-basis:100%}}
.card{background:var(--card);border:1px solid var(--line);border-radius:.9rem;padding:1rem;
box-shadow:var(--shadow);display:flex;flex-direction:column;gap:.7rem;min-width:0}
.card.mine{border-color:color-mix(in srgb,var(--accent) 45%,var(--line))}
.top{display:flex;align-items:flex-start;gap:.6rem}
.name{font-weight:650;font-size:1.05rem;overflow-wrap:anywhere}
.sub{color:var(--muted);font-size:.85rem}
.net{color:var(--muted);font-size:.75rem;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.pill{margin-left:auto;white-space:nowrap;border-radius:999px;padding:.15rem .6rem;font-size:.8rem;
font-weight:600;display:inline-flex;align-items:center;gap:.35rem}
.pill::before{content:"";width:.5rem;height:.5rem;border-radius:50%;background:currentColor}
.s-running{background:var(--okbg);color:var(--ok)}
.s-starting,.s-restoring{background:var(--infobg);color:var(--info)}
.s-stopping{background:var(--warnbg);color:var(--warn)}
.s-checkpointing,.s-checkpointed{background:var(--sleepbg);color:var(--sleep)}
.s-stopped{background:var(--offbg);color:var(--off)}
.s-failed{background:var(--badbg);color:var(--bad)}
.busy::before{animation:pulse 1s infinite ease-in-out}
@keyframes pulse{50%{opacity:.25}}
.links{display:flex;flex-wrap:wrap;gap:.4rem}
.links a{display:inline-flex;align-items:center;gap:.3rem;text-decoration:none;border:1px solid var(--line);
border-radius:.5rem;padding:.3rem .65rem;font-weight:550;font-size:.9rem;color:var(--text);
background:color-mix(in srgb,var(--accent) 6%,var(--card))}
.links a:hover{border-color:var(--accent);color:var(--accent)}
.links a::after{content:"\\2197";font-size:.8em;color:var(--muted)}
.facts{display:grid;grid-template-columns:repeat(3,1fr);gap:.5rem}
.fact{background:color-mix(in srgb,var(--text) 3%,var(--card));border-radius:.55rem;padding:.45rem .6rem;
min-width:0}
.fact span{display:block;color:var(--muted);font-size:.75rem;text-transform:uppercase;letter-spacing:.04em}
.fact b{font-size:1.02rem;font-variant-numeric:tabular-nums}
.line{font-size:.88rem;color:var(--muted)}
.line b{color:var(--text);font-weight:600;font-variant-numeric:tabular-nums}
.note{font-size:.85rem;border-radius:.5rem;padding:.45rem .6rem}
.note.bad{background:var(--badbg);color:var(--bad)}
.note.warn{background:var(--warnbg);color:var(--warn)}
.actions{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center;margin-top:auto;padding-top:.2rem}
button,select{font:inherit;font-size:.88rem;border-radius:.5rem;border:1px solid var(--line);
background:var(--card);color:var(--text);padding:.35rem .75rem;cursor:pointer}
button:hover{border-color:var(--accent)}
button.primary{background:var(--accent);color:var(--accent-ink);border-color:var(--accent)}
button.danger{color:var(--bad)}
button.confirm{background:var(--bad);color:#fff;border-color:var(--bad)}
button:disabled{opacity:.5;cursor:default}
.tpl{display:flex;gap:.4rem;align-items:center}
.empty{color:var(--muted);text-align:center;padding:3rem 1rem}
footer{max-width:72rem;margin:0 auto;padding:.5rem 1rem 2rem;color:var(--muted);font-size:.8rem}
#toast{position:fixed;left:50%;bottom:1rem;transform:translateX(-50%);background:var(--text);
color:var(--bg);padding:.55rem .9rem;border-radius:.6rem;font-size:.9rem;opacity:0;transition:opacity .2s;
pointer-events:none;max-width:90vw}
#toast.on{opacity:.95}
"""

SCRIPT = r"""
(function(){
"use strict";
var CSRF=document.querySelector('meta[name="hub-csrf"]').content;
var grid=document.getElementById("grid"), summary=document.getElementById("summary");
var updated=document.getElementById("updated"), filter=document.getElementById("filter");
var doc=null, fetchedAt=0, timer=null, failures=0;
var BUSY={starting:1,restoring:1,stopping:1,checkpointing:1};
var KIND={"http":"web request","ws-in":"terminal/editor input","ws-out":"output to the browser",
  "start":"environment start"};
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;
  if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function bytes(n){if(n===null||n===undefined)return "\u2014";var u=["B","KB","MB","GB","TB"],i=0;
  while(n>=1000&&i<u.length-1){n/=1000;i++;}return (i?n.toFixed(n<10?1:0):n)+" "+u[i];}
function dur(s){if(s===null||s===undefined)return "\u2014";s=Math.max(0,Math.floor(s));
  if(s<60)return s+"s";if(s<3600)return Math.floor(s/60)+"m "+(s%60)+"s";
  if(s<86400)return Math.floor(s/3600)+"h "+Math.floor(s%3600/60)+"m";
  return Math.floor(s/86400)+"d "+Math.floor(s%86400/3600)+"h";}
function num(n){return n===null||n===undefined?"\u2014":String(n);}
function toast(msg){var t=document.getElementById("toast");t.textContent=msg;t.className="on";
  clearTimeout(toast.t);toast.t=setTimeout(function(){t.className="";},3500);}
// The safe name ([a-z0-9-], distinct for look-alike names) is what identifies a user here.
function shown(u){return u.name||u.user;}
function elapsed(){return doc?(Date.now()-fetchedAt)/1000:0;}

var armed={}, inflight={}, chosen={};
function act(u,action,button){
  var url="/_hub/api/users/"+encodeURIComponent(u.name||u.user)+"/"+action;
  inflight[u.user]=action;button.disabled=true;
  fetch(url,{method:"POST",credentials:"same-origin",headers:{"X-Hub-CSRF":CSRF}})
    .then(function(r){return r.json().catch(function(){return {};}).then(function(b){return [r,b];});})
    .then(function(rb){var r=rb[0],b=rb[1];delete inflight[u.user];
      if(r.ok){toast(action.charAt(0).toUpperCase()+action.slice(1)+" "+shown(u)+": "+(b.state||"done"));}
      else{toast("Could not "+action+" "+shown(u)+": "+(b.error||r.status));}
      poll(true);})
    .catch(function(){delete inflight[u.user];toast("The hub did not answer.");render();});
}
// A template is chosen at login (the seed's /_hub/login?template=NAME): the new session carries
// it, so the hub keeps the environment on it; the provider's session makes the round trip silent.
function switchTemplate(u,template){
  var here=location.origin+"/", next=null;
  Object.keys(u.routes||{}).forEach(function(p){if(u.routes[p]===here)next=here;});
  if(!next){var first=Object.keys(u.routes||{})[0];next=first?u.routes[first]:"/";}
  location.href="/_hub/login?template="+encodeURIComponent(template)+"&next="+encodeURIComponent(next);
}
function confirmButton(label,cls,u,action){
  var key=u.user+"\n"+action, b=el("button",cls,label);b.dataset.action=action;
  function show(){var on=armed[key]&&armed[key]>Date.now();
    b.textContent=on?"Confirm "+label.toLowerCase()+"?":label;b.classList.toggle("confirm",!!on);}
  b.addEventListener("click",function(){
    if(armed[key]&&armed[key]>Date.now()){delete armed[key];act(u,action,b);return;}
    armed[key]=Date.now()+4000;show();setTimeout(show,4100);});
  show();return b;
}
function fact(label,value,raw){var f=el("div","fact");f.appendChild(el("span",null,label));
  var b=el("b",null,value);b.dataset.value=(raw===null||raw===undefined)?"":String(raw);
  b.dataset.fact=label.toLowerCase();f.appendChild(b);return f;}

function card(u){
  var me=doc.viewer.user, admin=doc.viewer.admin, own=(u.user===me);
  var c=el("article","card"+(own?" mine":""));c.dataset.user=u.user;c.dataset.state=u.state;
  var top=el("div","top"), t=el("div");
  t.appendChild(el("div","name",shown(u)+(own&&admin?" (you)":"")));
  if(u.name&&u.name!==u.user)t.appendChild(el("div","sub provider","\u201c"+u.user+"\u201d at the login provider"));
  t.appendChild(el("div","sub",(u.template||"default")+" template"));
  if(u.service_ip||u.net_id)t.appendChild(el("div","net",(u.service_ip||"")+
    (u.net_id?(u.service_ip?" \u00b7 ":"")+"net "+u.net_id:"")));
  top.appendChild(t);
  top.appendChild(el("span","pill s-"+u.state+(BUSY[u.state]?" busy":""),u.state));
  c.appendChild(top);
  var links=el("div","links");
  Object.keys(u.routes||{}).forEach(function(p){if(!own)return;var a=el("a",null,p);a.href=u.routes[p];
    a.target="_blank";a.rel="noopener";links.appendChild(a);});
  if(links.childNodes.length)c.appendChild(links);
  var facts=el("div","facts");
  var disk=fact("Disk",(u.disk_partial?"\u2265 ":"")+bytes(u.disk_bytes),u.disk_bytes);
  if(u.disk_partial){disk.classList.add("partial");disk.title="At least this much: the sampler counts at most 100,000 files per directory tree";}
  facts.appendChild(disk);
  facts.appendChild(fact("Containers",num(u.containers_running),u.containers_running));
  facts.appendChild(fact("Images",num(u.images),u.images));
  c.appendChild(facts);
  var idle=el("div","line idle");if(u.idle_reason)idle.title="Idle culler: "+u.idle_reason;
  if(u.state==="running"&&u.idle_seconds!==null){
    idle.appendChild(document.createTextNode("Idle "));
    var b=el("b","idle-timer",dur(u.idle_seconds+elapsed()));b.dataset.base=u.idle_seconds;idle.appendChild(b);
    if(u.activity_kind)idle.appendChild(document.createTextNode(" \u00b7 last: "+(KIND[u.activity_kind]||u.activity_kind)));
    if(u.cull_in_seconds!==null){var cl=el("span","cull"," \u00b7 "+(u.checkpoint_enabled&&!u.checkpoint_disabled?"suspends":"stops")+" in "+dur(u.cull_in_seconds-elapsed()));
      cl.dataset.base=u.cull_in_seconds;cl.dataset.verb=(u.checkpoint_enabled&&!u.checkpoint_disabled?"suspends":"stops");idle.appendChild(cl);}
  }else{idle.appendChild(document.createTextNode(u.state==="checkpointed"?
    "Suspended: opening a link resumes it where it was.":u.state==="stopped"?
    "Not running: opening a link starts it.":u.state==="failed"?"Could not start.":
    u.state==="running"?"Running.":"Working\u2026"));}
  c.appendChild(idle);
  var ck=el("div","line");
  if(u.checkpoint_disabled){ck=el("div","note warn","Checkpointing disabled after "+u.checkpoint_failures+
    " failures in a row; idle stops recreate the environment."+(u.checkpoint_error?" Last: "+u.checkpoint_error:""));
    if(admin&&!inflight[u.user]){var rc=el("button",null,"Turn checkpointing back on");rc.dataset.action="checkpoint-reset";
      rc.addEventListener("click",function(){act(u,"checkpoint-reset",rc);});ck.appendChild(document.createTextNode(" "));ck.appendChild(rc);}}
  else{ck.appendChild(document.createTextNode("Checkpointing "));ck.appendChild(el("b",null,u.checkpoint_enabled?"on":"off"));
    if(u.checkpoint_failures)ck.appendChild(document.createTextNode(" \u00b7 "+u.checkpoint_failures+" recent failure"+(u.checkpoint_failures>1?"s":"")));}
  c.appendChild(ck);
  if(u.error&&u.state==="failed")c.appendChild(el("div","note bad",u.error));
  var actions=el("div","actions");
  var live=(u.state==="running"||u.state==="starting"||u.state==="restoring");
  if(inflight[u.user]){
    actions.appendChild(el("span","sub",{stop:"Stopping",checkpoint:"Checkpointing",
      restart:"Restarting","checkpoint-reset":"Turning checkpointing on"}[inflight[u.user]]+"\u2026"));
  }else if(own||admin){
    if(live)actions.appendChild(confirmButton("Stop","danger",u,"stop"));
    if(admin&&u.state==="running")actions.appendChild(confirmButton("Checkpoint",null,u,"checkpoint"));
    var rb=el("button",own&&!live?"primary":null,live?"Restart":"Start");rb.dataset.action="restart";
    rb.addEventListener("click",function(){act(u,"restart",rb);});actions.appendChild(rb);
    if(own&&doc.templates.length>1){
      var w=el("div","tpl"),sel=el("select");sel.setAttribute("aria-label","Template");
      doc.templates.forEach(function(n){var o=el("option",null,n);o.value=n;
        if(n===(chosen[u.user]||u.template))o.selected=true;sel.appendChild(o);});
      sel.addEventListener("change",function(){chosen[u.user]=sel.value;});
      var sw=el("button",null,"Switch");sw.dataset.action="switch";
      sw.addEventListener("click",function(){if(sel.value===u.template){toast("Already on "+sel.value);return;}
        switchTemplate(u,sel.value);});
      w.appendChild(sel);w.appendChild(sw);actions.appendChild(w);
    }
  }
  if(actions.childNodes.length)c.appendChild(actions);
  return c;
}

function render(){
  if(!doc)return;
  var q=(filter.value||"").toLowerCase();
  var users=doc.users.filter(function(u){return !q||u.user.toLowerCase().indexOf(q)>=0||
    shown(u).indexOf(q)>=0||
    (u.template||"").toLowerCase().indexOf(q)>=0||u.state.indexOf(q)>=0;});
  summary.textContent="";
  var counts={},disk=0,anyDisk=false;
  var anyPartial=false;
  doc.users.forEach(function(u){counts[u.state]=(counts[u.state]||0)+1;if(u.disk_bytes!==null){disk+=u.disk_bytes;anyDisk=true;anyPartial=anyPartial||!!u.disk_partial;}});
  if(doc.viewer.admin){
    var c=el("span","chip");c.appendChild(el("b",null,doc.users.length));c.appendChild(document.createTextNode(" environments"));summary.appendChild(c);
    ["running","checkpointed","stopped","failed"].forEach(function(s){if(!counts[s])return;var x=el("span","chip");
      x.appendChild(el("b",null,counts[s]));x.appendChild(document.createTextNode(" "+s));summary.appendChild(x);});
    if(anyDisk){var d=el("span","chip");d.appendChild(el("b",null,(anyPartial?"\u2265 ":"")+bytes(disk)));d.appendChild(document.createTextNode(" on disk"));summary.appendChild(d);}
    filter.hidden=false;
  }
  summary.appendChild(filter);
  grid.textContent="";
  if(!users.length){grid.appendChild(el("div","empty",q?"Nothing matches \u201c"+filter.value+"\u201d.":"No environments yet."));}
  users.sort(function(a,b){var me=doc.viewer.user;return (b.user===me)-(a.user===me)||
    (a.user<b.user?-1:a.user>b.user?1:0);});
  users.forEach(function(u){grid.appendChild(card(u));});
  tick();
}
function tick(){
  if(!doc)return;var e=elapsed();
  Array.prototype.forEach.call(document.querySelectorAll(".idle-timer"),function(b){b.textContent=dur(+b.dataset.base+e);});
  Array.prototype.forEach.call(document.querySelectorAll(".cull"),function(b){b.textContent=" \u00b7 "+b.dataset.verb+" in "+dur(+b.dataset.base-e);});
  var age=doc.refreshed_at?Math.max(0,doc.now-doc.refreshed_at):null;
  updated.textContent="Updated "+dur(e)+" ago"+(doc.stats_interval_seconds?" \u00b7 disk and docker numbers sampled every "+
    doc.stats_interval_seconds+" s":"")+(failures?" \u00b7 the hub is not answering, retrying":"");
}
function schedule(){clearTimeout(timer);if(document.hidden)return;
  var busy=doc&&doc.users.some(function(u){return BUSY[u.state];});
  timer=setTimeout(poll,failures?Math.min(30000,2000*failures):(busy?1000:3000));}
function poll(now){
  clearTimeout(timer);
  fetch("/_hub/api/status",{credentials:"same-origin",cache:"no-store"})
    .then(function(r){if(r.status===401){location.href="/_hub/login?next="+encodeURIComponent(location.pathname);throw 0;}
      if(!r.ok)throw new Error(r.status);return r.json();})
    .then(function(d){doc=d;fetchedAt=Date.now();failures=0;
      // an open <select> would close under a re-render: update the timers only
      if(document.activeElement&&document.activeElement.tagName==="SELECT"){tick();}else{render();}
      schedule();})
    .catch(function(e){if(e===0)return;failures++;tick();schedule();});
}
filter.addEventListener("input",render);
document.addEventListener("visibilitychange",function(){if(!document.hidden)poll(true);});
setInterval(tick,1000);
poll(true);
})();
"""

PAGE = Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="hub-csrf" content="$csrf">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="data:,">
<title>Hub dashboard</title><style nonce="$nonce">$style</style></head>
<body>
<header><div class="bar"><span class="logo"><i></i>Hub</span>
<span class="who">$badge<b id="viewer" title="$provider_name">$user</b>
<form method="post" action="/_hub/logout"><input type="hidden" name="csrf" value="$csrf">
<button type="submit" id="logout">Log out</button></form></span></div></header>
<main>
<div class="summary" id="summary"><input id="filter" class="filter" type="search"
 placeholder="Filter by user, template or state" aria-label="Filter" hidden></div>
<div class="grid" id="grid"><div class="empty">Loading\u2026</div></div>
</main>
<footer id="updated"></footer>
<div id="toast" role="status" aria-live="polite"></div>
<script nonce="$nonce">$script</script>
</body></html>
"""
)


def render_page(user: str, admin: bool, csrf: str, nonce: str) -> str:
    return PAGE.substitute(
        csrf=html.escape(csrf),
        nonce=nonce,
        style=STYLE,
        script=SCRIPT,
        user=html.escape(identity.shown(user)),
        provider_name=html.escape(user),
        badge='<span class="chip">admin</span>' if admin else "",
    )
