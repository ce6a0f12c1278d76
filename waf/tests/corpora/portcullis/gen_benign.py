#!/usr/bin/env python3
"""Writes prose.benign.txt: natural-language text that mentions the words injection rules look
for ("select", "union", "drop", "script", "alert", "or 1", "exec", "cat", quotes, parentheses,
semicolons) the way people write them: documentation paragraphs, product reviews, chat lines
and support tickets. Deterministic (fixed seed): run it again after editing and commit both.

Every line is benign; the WAF at paranoia level 1 must let at least 99% of them through
(waf/tests/coverage.rs)."""
import random

random.seed(20261207)
out = []

docs = [
    "To select a plan, open Settings and click Billing; the union of both discounts applies at checkout.",
    "Select the rows you want to export, then choose Drop duplicates from the menu.",
    "The script runs every night at 2 a.m. and sends an alert if the backup fails.",
    "Drop the table cloth over the edge (about 20 cm) and select a napkin colour that matches.",
    "You can select one or more files; drop them onto the window to upload.",
    "The trade union said the drop in wages was 'not acceptable' and called a meeting for Friday.",
    "If the alert fires more than once or 1 hour passes without an update, escalate to on-call.",
    "Use the select element for short lists and a combo box for long ones (more than 20 items).",
    "Our script editor highlights syntax; press Ctrl+Enter to run the current cell.",
    "The European Union and the UK agreed on the drop-off points for the new shipping route.",
    "Alerts are grouped by service; select 'Mute' to silence one for an hour or 1 day.",
    "Please select your seat; drop-down menus list the rows from A to K.",
    "The movie script was rewritten three times before the director was happy with it.",
    "Where does the data go? It goes into a table, and from there into the weekly report.",
    "Order by date or by price; the default is newest first.",
    "Update: the delete button now asks for confirmation before removing anything.",
    "Insert the SIM card, then select your network from the list.",
    "The union of two sets A and B contains every element of A or B (or both).",
    "A drop of 1 percent in the rate means about 12 dollars less each month.",
    "In the second act, the script calls for rain, so select the umbrellas from the props room.",
    "Set an alert for 'price drops' and we'll email you when the jacket is on sale.",
    "Run the setup script once; after that, the app updates itself.",
    "Select 'Or' to match any condition, 'And' to match all of them.",
    "He said 'select all' twice, and then the whole document was gone. Undo saved us!",
    "To create a new project, choose File > New > Project and select a template.",
    "The cat sat on the mat; then it jumped on the table and knocked over a glass.",
    "Execution of the plan starts in May; the exec team meets on Mondays.",
    "Is it true or false? 1 answer is enough; choose wisely.",
    "The admin panel lets you drop users from a group or select a new owner.",
    "Shell out 20 dollars for the premium plan if you need more than 1 GB.",
    "We use Python, Ruby and a bit of Perl for scripts that glue the systems together.",
    "Sleep well: the night mode dims the screen after 10 p.m. or 1 hour of inactivity.",
    "Wait for the green light, then press 'Start' and select your language.",
    "Please echo back the confirmation number so we know you received it.",
    "A union worker's shift starts at 7; the drop zone is behind the warehouse.",
    "Copy the file to your desktop and rename it; the old name had a typo.",
    "She wrote the script, directed the play and still found time to select the music.",
    "Type your name and email; we'll alert you when the item is back in stock.",
    "Kill the lights when you leave (the switch is by the door) and lock up.",
    "The formula is price * quantity - discount, rounded to 2 decimals.",
    "Chapter 3 explains how to select, filter and sort data in a spreadsheet.",
    "The alert box says 'Are you sure?' with OK or Cancel; choose OK to continue.",
    "A drop-down list is the easiest way to select one option from many.",
    "They formed a union in 1921; membership grew quickly after the strike.",
    "Read the FAQ first: it answers most questions about refunds, returns and exchanges.",
    "Hello team, the build is green again; thanks for the quick fix!",
    "Can someone review my PR? It touches the login page and the password reset flow.",
    "The meeting moved to 3pm; please update your calendars (sorry for the late notice).",
    "I'll drop by the office tomorrow morning to pick up the keys.",
    "Let's select the best three ideas and vote on them on Friday.",
    "Heads up: the alert threshold for CPU is now 80% for 5 minutes.",
    "Just a script kiddie poking at the login page again, nothing to worry about.",
    "Can you union these two lists and send me the result?",
    "LOL, that's the best drop of the season so far :)",
    "Where are we on the release? Is it 1.2 or 1.3 that ships first?",
    "ok, or 1 more thing: can we rename the 'misc' folder?",
    "Brb, grabbing coffee; if the alert goes off again, ping me.",
    "Who wants to select the restaurant for the team dinner?",
    "New hire starts Monday; please add her to the union of all channels we use.",
    "The drop table near the window needs fixing, the hinge is loose.",
    "I can't select text in the PDF, is it a scanned image?",
    "My script for the talk is 10 minutes too long, any ideas what to cut?",
    "The order of the slides: intro, demo, results, questions.",
    "Quick question: does the 'delete account' button delete everything or just the profile?",
    "Ticket #4412: customer cannot select a delivery date after the 15th.",
    "Ticket #4415: the alert email says 'drop shipped' but the order is still pending.",
    "Ticket #4420: user reports that the script on the checkout page is slow on mobile.",
    "Ticket #4431: refund of 1 item or 2? Customer says 2, warehouse says 1.",
    "Ticket #4438: please update the shipping address to the new office (same city).",
    "Ticket #4440: 'Select all' in the inbox selects only the first page.",
    "Ticket #4452: drop-off location closed on Sundays; suggest Saturday instead.",
    "The union rep asked us to select two delegates for the annual meeting.",
    "Our user guide is in the docs folder; section 4 explains how to insert images.",
    "This recipe calls for a drop of vanilla and 1 or 2 cups of flour.",
    "If (and only if) the price drops below 50, we'll order another batch.",
    "The ratio is 3:1 - three parts water, one part concentrate.",
    "E-mail me at the address on the invoice; I'll reply within a day or two.",
    "Use quotes for exact phrases, for example \"union station\" or \"drop zone\".",
    "It's 5 o'clock somewhere; select a drink from the menu and relax.",
    "The teacher's script for the lesson included a quiz at the end.",
    "A 'select' query retrieves data; an 'update' changes it - that's the gist of lesson one.",
]
out += docs

products = ["headphones", "blender", "backpack", "keyboard", "jacket", "lamp", "kettle",
            "router", "camera", "desk chair", "phone case", "running shoes", "coffee grinder",
            "monitor", "tent", "water bottle", "drill", "mattress", "printer", "watch"]
openers = ["I bought this {p} last month", "Got the {p} as a gift", "We ordered two of these {p}s",
           "After a week with the {p}", "My old {p} broke, so I picked this one",
           "Honestly, the {p}", "Five stars for the {p}", "Three stars: the {p}",
           "Returned the {p}", "Second {p} from this brand"]
middles = ["and the sound quality is great, though the battery drops fast",
           "and it's the best I've used (or 1 of the best, anyway)",
           "but the select button is hard to press with gloves on",
           "and setup took 5 minutes; no script or app needed",
           "but I got an alert every hour until I turned notifications off",
           "and the union of comfort and style is hard to beat",
           "but it's a bit heavy - about 2 kg - for travel",
           "and the price drop on Black Friday made it a steal",
           "although the manual's 'select mode' section is confusing",
           "and my kids love it; they drop it all the time and it still works",
           "but customer service took 3 days to answer; they did fix it though",
           "and it works with both Mac and Windows (or Linux, with a driver)",
           "but the colour is darker than in the photos",
           "and it survived a drop from the table onto tiles",
           "but the 'delete all' option in the app scared me",
           "and I'd buy it again, 10/10",
           "but I wish it had a timer or 1 more speed setting",
           "and it fits in the overhead bin; select the larger size if unsure"]
closers = ["Recommended!", "Would buy again.", "Not bad for the price.", "Good, not great.",
           "Worth it.", "Meh.", "Solid choice :)", "Fine for everyday use.", "Love it!!!",
           "Check the size chart first.", "Order one size up.", "Thanks, seller!"]
for _ in range(300):
    p = random.choice(products)
    line = random.choice(openers).format(p=p) + " " + random.choice(middles) + ". " + random.choice(closers)
    out.append(line)

code = [
    "function add(a, b) { return a + b; }",
    "const total = items.reduce((sum, item) => sum + item.price, 0);",
    "for (let i = 0; i < list.length; i++) { console.log(list[i]); }",
    "def select_best(options): return max(options, key=lambda o: o.score)",
    "if user.is_admin or user.id == 1: show_panel()",
    "fn main() { println!(\"hello, world\"); }",
    "let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();",
    "import numpy as np; x = np.arange(10).reshape(2, 5)",
    "SELECT is a keyword; in pandas you write df[df.price > 10] instead",
    "<div class=\"card\"><h2>Title</h2><p>Some text here.</p></div>",
    "git commit -m \"fix typo in README\" && git push",
    "docker compose up -d (then open http://localhost:8080 in the browser)",
    "while queue: node = queue.pop(0); visit(node)",
    "x = [i * i for i in range(10) if i % 2 == 0]",
    "public static void main(String[] args) { System.out.println(\"Hi\"); }",
    "const [state, setState] = useState(0);",
    "type Point = { x: number; y: number };",
    "match value { Some(v) => v, None => 0 }",
    "try { parse(input); } catch (e) { showError(e.message); }",
    "ul li:first-child { font-weight: bold; }",
    "package main; import \"fmt\"; func main() { fmt.Println(\"hi\") }",
    "dict.get('key', default) returns default when the key is missing",
    "npm install --save-dev eslint prettier",
    "The regex ^[a-z0-9_-]{3,16}$ checks usernames.",
    "map.entrySet().stream().filter(e -> e.getValue() > 1).count()",
    "print(f\"{name} has {count} items\")",
    "df.drop(columns=['tmp'], inplace=True)",
    "union-find (disjoint set) gives near O(1) merges",
    "select! { _ = tick.tick() => {}, msg = rx.recv() => handle(msg) }",
    "alert thresholds live in config.yaml under monitoring.alerts",
    "const url = `${base}/users/${id}`;",
    "console.log(`${user.name} logged in`);",
]
out += code

with open("prose.benign.txt", "w") as f:
    f.write("# Generated by gen_benign.py (fixed seed); benign text, one item a line.\n")
    for line in out:
        f.write(line + "\n")
print(len(out), "lines")
