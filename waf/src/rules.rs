//! The built-in rules: CRS-style ids, paranoia level, severity score, the kinds of target
//! they apply to, the literals that any match must contain (the prefilter), and a pattern.
//!
//! Patterns run on the normalized value: URL-decoded until stable, HTML entities decoded,
//! lowercased, NULs removed, whitespace runs compressed to one space (so they are written
//! in lowercase and use a single ` ` or `\s`). `Input::Decoded` rules see the decoded value
//! with its original case and line breaks; they exist for CR/LF based attacks.
//!
//! Patterns are compiled as byte regexes with Unicode disabled: `\w`, `\s` and `\b` are
//! ASCII, which keeps every set on the lazy DFA even on binary-looking input (a Unicode
//! `\b` makes the DFA give up on the first non-ASCII byte and fall back to a slow NFA).
//! Non-ASCII characters are therefore written as their UTF-8 bytes (`\xc2\xbc` is `¼`).
//!
//! Every literal listed for a rule must occur in any value the pattern matches: the engine
//! only runs a group's regex set when the Aho-Corasick prefilter found one of the group's
//! literals, so a missing literal would be a silent false negative. Rules without literals
//! always run.

use crate::parse::Kind;
use crate::Group;

mod beyond_crs;
pub mod code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    Normalized,
    Decoded,
}

/// What a finding of a check says: the one entry every check has, whether it is a pattern
/// rule ([`RuleDef::check`]), a check written as code ([`code`]) or a custom rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// CRS's number where CRS has the rule (exceptions: [`code`]), `935xxx`, `9309xx` and
    /// `9329xx` for Portcullis' own.
    pub id: u32,
    pub group: Group,
    /// Paranoia level from which the check runs (1-4).
    pub pl: u8,
    /// Anomaly score of a finding.
    pub score: u32,
    /// The audit line's `message`.
    pub msg: &'static str,
}

#[derive(Debug, Clone)]
pub struct RuleDef {
    pub check: Check,
    /// Bit set of [`Kind::bit`].
    pub scope: u16,
    /// Restrict to one header (lowercase name), for header-specific rules.
    pub header: Option<&'static str>,
    pub input: Input,
    pub literals: &'static [&'static str],
    pub pattern: &'static str,
    /// Normalized values the rule must find (unit test `every_rule_has_examples_that_it_finds`:
    /// each matches the pattern, contains one of the literals, and is found by the engine).
    pub examples: &'static [&'static str],
}

pub const PATH: u16 = 1;
pub const ARG_NAME: u16 = 2;
pub const ARG: u16 = 4;
pub const COOKIE: u16 = 8;
pub const COOKIE_NAME: u16 = 16;
pub const HEADER: u16 = 32;
pub const FILENAME: u16 = 64;
pub const BODY: u16 = 128;
/// Where injection payloads go: every argument-like value, names included, and headers.
pub const ANY: u16 = ARG_NAME | ARG | COOKIE | COOKIE_NAME | HEADER | FILENAME | BODY;
pub const VALUES: u16 = ARG | COOKIE | HEADER | BODY | FILENAME;

const _: () = assert!(PATH == 1 && BODY == 128);

#[allow(clippy::too_many_arguments)]
const fn rule(
    id: u32,
    group: Group,
    pl: u8,
    score: u32,
    scope: u16,
    msg: &'static str,
    literals: &'static [&'static str],
    pattern: &'static str,
    examples: &'static [&'static str],
) -> RuleDef {
    RuleDef {
        check: Check {
            id,
            group,
            pl,
            score,
            msg,
        },
        scope,
        header: None,
        input: Input::Normalized,
        literals,
        pattern,
        examples,
    }
}

const fn decoded(mut r: RuleDef) -> RuleDef {
    r.input = Input::Decoded;
    r
}

const fn header(mut r: RuleDef, name: &'static str) -> RuleDef {
    r.header = Some(name);
    r
}

use Group::*;

/// Unix commands that are not English words: seeing one after a shell separator (or at the
/// start of a value, followed by an argument) is a command injection.
const UNIX_CMD: &str = r"(?:ansible(?:-[a-z]+)?|chef-[a-z]+|knife|cscli|visudo|lastlogin|aa-[a-z]+|perf|rmt(?:-[a-z]+)?|htop|aptitude|c89|c99|gcc|cc|tcc|clang|g\+\+|iwr|irm|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|csh|tcsh|dash|python[0-9.]*|perl|ruby|php[0-9]*|node|nmap|telnet|ssh|scp|sftp|chmod|chown|chgrp|rm|socat|base32|base64|xxd|awk|gawk|nawk|sed|grep|egrep|xargs|ifconfig|netstat|hostname|systemctl|busybox|passwd|useradd|usermod|crontab|nohup|printenv|env|pwd|tftp|openssl|ps|mkfifo|sudo|nslookup|traceroute|lsof|tar|bsdtar|unzip|gunzip|zcat|zstdcat|bzcat|xzcat|flock|cpulimit|ionice|strace|ltrace|gdb|dmesg|whereis|readlink|realpath|mkdir|rmdir|umount|chattr|lsattr|getent|lastlog|finger|vi|vim|nano|uniq|tee|cmp|md5sum|sha1sum|sha256sum|killall|pkill|pgrep|dig|whois|ftp|rsync|ssh-keygen|docker|kubectl|svn|gcc|cc|java|jrunscript|lua|tclsh|tmux|compgen|runuser|setsid|sg|chroot|unshare|nsenter|capsh|poweroff|iptables|ufw|adduser|visudo|apt-get|yum|dnf|pip3|npm|ssh-agent|7z|rar|unrar|arp|tcpdump|wireshark|tshark|sqlmap|hydra|hashcat|msfconsole|msfvenom|ncrack)";
/// Unix commands that are also English words: only with a shell-shaped argument after them.
const UNIX_WORD: &str = r"(?:su|echo|cat|tac|rev|printf|wc|od|strings|nl|column|fold|comm|nice|which|file|stat|cp|mv|ln|dd|mount|groups|last|ed|ex|less|more|head|tail|sort|cut|tr|diff|kill|ping|host|git|make|expect|script|screen|watch|timeout|time|sleep|exec|eval|source|alias|export|unset|set|history|declare|bridge|find|locate|touch|date|w|who|reboot|shutdown|halt|init|apt|pip|gem|zip|route|john)";
/// Commands that only run another command: `time sh -c id`.
const WRAPPER: &str = r"(?:(?:time|nohup|strace|ltrace|nice|ionice|timeout\s+\d+\w?|env|sudo|doas|exec|command|builtin|xargs|stdbuf|setsid|cpulimit\s+-\w+\s+\d+\s+-\w+|chroot\s+\S+)\s+)*";
/// What a shell argument looks like right after a command: an option, a path, a variable,
/// a quote, a number.
const SHELL_ARG: &str = r"\s+(?:-{1,2}[a-z0-9]|[/~$'\x22`*\\]|\.{1,2}/|\d)";

/// The built-in rules, built once per process.
pub fn builtin() -> &'static [RuleDef] {
    static RULES: std::sync::OnceLock<Vec<RuleDef>> = std::sync::OnceLock::new();
    RULES.get_or_init(build)
}

fn build() -> Vec<RuleDef> {
    // Built at runtime so the long shared alternations can be spliced in once.
    let mut rules = vec![
        // ---------------------------------------------------------------- 942 SQL injection
        rule(942140, SqlInjection, 1, 5, ANY | PATH, "SQL injection: database names and system tables",
            &["information_schema", "mysql.", "pg_", "sysobjects", "syscolumns", "sys.", "sqlite_", "msys", "all_tables", "user_tables", "dba_", "sysdatabases", "xp_", "sp_", "dbms_", "utl_", "tempdb", "msdb", "northwind", "schema_name", "db_name", "database"],
            r"information_schema|\bmysql\.(?:user|db|host|proc)\b|\bpg_(?:catalog|shadow|user|tables|class|namespace|proc|roles|authid|read_file|ls_dir|sleep)\b|\bsys(?:objects|columns|databases|logins|users)\b|\bsys\.(?:objects|tables|columns|databases|sql_logins|server_principals)\b|\bsqlite_(?:master|schema|temp_master)\b|\bmsys(?:objects|accessobjects|aces|queries|relationships)\b|\b(?:all|user|dba)_(?:tables|tab_columns|users|objects)\b|\bmaster\.\.sysdatabases|\bxp_(?:cmdshell|regread|regwrite|dirtree|fileexist|servicecontrol)\b|\bsp_(?:executesql|oacreate|oamethod|password|configure|addlogin|makewebtask)\b|\bdbms_(?:pipe|lock|java|xmlquery|scheduler|export_extension)\b|\butl_(?:http|inaddr|file|smtp|tcp)\b|\b(?:tempdb|msdb|northwind|schema_name)\b|\b(?:db_name|database|schema_name)\s*\(",
            &["msdb"]),
        rule(942151, SqlInjection, 1, 5, ANY | PATH, "SQL injection: SQL function call",
            &["("],
            r#"(?:^|[^\w.$>:-])(?:sleep|pg_sleep|benchmark|load_file|extractvalue|updatexml|randomblob|sys_eval|sys_exec|group_concat|name_const|make_set|json_keys|json_extract|json_build_object|jsonb_\w+|geometrycollection|multipoint|multipolygon|multilinestring|polygon|linestring|gtid_subset|concat_ws|concat|coalesce|ifnull|isnull|nullif|compress|uncompress|xmltype|current_user|session_user|system_user|sysdate|database|decode|encode|unhex|hex|insert|trim|rtrim|ltrim|md5|sha1|sha2|mid|ord|ascii|char|chr|nchar|pow|power|rand|sin|cos|tan|strcmp|substr|substring|substring_index|find_in_set|starts_with|unistr|lo_get|lo_import|lo_export|pg_read_file|pg_ls_dir|lpad|rpad|soundex|char_length|octet_length|bit_length|last_insert_id|row_count|found_rows|connection_id|curdate|curtime|utc_date|utc_time|current_timestamp|dbms_pipe\.receive_message|dbms_lock\.sleep|utl_inaddr\.get_host_address|utl_http\.request)\s*\(\s*(?:[\w'"@`(),.*+ -]|$)|\bwaitfor\s+(?:delay|time)\b"#,
            &["cos("]),
        rule(942190, SqlInjection, 1, 5, ANY | PATH, "SQL injection: UNION SELECT",
            &["union"],
            r"\bunion(?:\s|\(|/\*.*?\*/)*(?:all|distinct)?(?:\s|\(|/\*.*?\*/)*select\b",
            &["union select"]),
        rule(942200, SqlInjection, 1, 5, ANY | PATH, "SQL injection: quote or parenthesis closed, then a SQL clause",
            &["'", "\"", "`", ")"],
            r#"(?:^|[^\s(])['"`)]\s*(?:;\s*)?(?:\b(?:or|and|xor|union|having|order\s+by|group\s+by|limit|procedure|into|rlike|regexp|like|div)\b|\|\||&&)\s*(?:['"`(]|\d|@|[a-z_]+\s*(?:\(|=|<|>|like\b|is\b|between\b|in\s*\())"#,
            &["'or("]),
        rule(942210, SqlInjection, 1, 5, ANY | PATH, "SQL injection: stacked query",
            &[";"],
            r#"(?:['"`)]|\d|\bnull|\bend)\s*;\s*(?:drop|alter|create|truncate|insert|update|delete|exec|execute|declare|select|shutdown|grant|revoke|rename|replace|merge|load|set\s+@|call|waitfor|begin|if\b)"#,
            &["';if"]),
        rule(942360, SqlInjection, 1, 5, ANY | PATH, "SQL injection: multi-word keywords libinjection misses",
            // `order` only counts before a byte that can start the `\s+` of `\border\s+by`
            // in the text the set sees (the normalized value) or in its SQL-comment
            // alternate: whitespace itself, `/` (a `/*` comment becomes a space), or `*`
            // (`/*!order*/` becomes ` order `). The alternate copies everything outside
            // comments verbatim and pads what it inserts with spaces, so an `order` it
            // shows before whitespace is one of those three cases in the normalized
            // value; the bare literal fired on every `order_id` and `/orders` path
            // (test `order_literals_cover_every_order_by_match`).
            &["into", "load", "lock", "boolean", "expansion", "update", "procedure", "order ", "order\t", "order\n", "order\x0b", "order\x0c", "order\r", "order/", "order*", "group", "having", "select"],
            r"\binto\s+(?:out|dump)file\b|\bload\s+data\s+(?:low_priority\s+|concurrent\s+|local\s+)*infile\b|\block\s+in\s+share\s+mode\b|\bin\s+boolean\s+mode\b|\bwith\s+query\s+expansion\b|\bfor\s+update\s+(?:of|nowait|skip\s+locked)\b|\bprocedure\s+analyse\b|\bselect\b.{0,100}\binto\s+@|\border\s+by\s+\d+\s*(?:--|#|/\*|;|$)|\bgroup\s+by\s+.{1,60}\bhaving\s+\d|\bselect\s+(?:\*|[\w@(),.`' ]{1,80})\s+from\s+[\w.`]+.{0,40}\bwhere\b",
            &["order by 5"]),
        rule(942500, SqlInjection, 1, 5, ANY | PATH, "SQL injection: MySQL executable comment",
            &["/*!", "/*+"],
            r"/\*[!+](?:\d{0,6})[\w\s=_\-()'@.,*]*\*/?",
            &["/*!1*/"]),
        rule(942240, SqlInjection, 1, 5, ANY | PATH, "SQL injection: DDL/DML statement after a terminator or comment",
            &["drop", "alter", "create", "truncate", "shutdown", "grant", "exec", "declare"],
            r#"(?:^|[;'"`)]|--|#|\*/)\s*(?:drop\s+(?:table|database|schema|user|view|procedure|function|index|trigger)|alter\s+(?:table|database|user|system)|create\s+(?:table|database|user|or\s+replace|procedure|function|trigger)|truncate\s+table|shutdown\b|grant\s+(?:all|select|insert|dba)|exec(?:ute)?\s*(?:\(|@|master\.|xp_|sp_|immediate)|declare\s+[@#]?\w+\s+(?:varchar|nvarchar|int|char|cursor|table))"#,
            &["exec("]),
        rule(942290, SqlInjection, 1, 5, ANY, "NoSQL injection: MongoDB operators",
            &["$"],
            r"\[\s*\$(?:ne|eq|lte?|gte?|n?in|mod|all|size|exists|type|slice|x?or|nor|not|div|like|between|and|where|regex|elemmatch|expr|text|function|search|comment|geowithin|near)\s*\]|^\$(?:ne|eq|gt|gte|lt|lte|nin|in|where|regex|expr|function|accumulator|elemmatch|or|and|nor|not|exists|jsonschema|text|search|comment|geowithin|near|mod|all|size|type|slice)$",
            &["$not"]),
        rule(942220, SqlInjection, 1, 5, ARG | COOKIE, "SQL injection: integer overflow probe",
            &["2147483", "4294967", "23456", "12345", "2.2250738585072", "1e309"],
            r"^(?:-0000023456|4294967295|4294967296|2147483648|-2147483648|-2147483649|0000023456|0000012345|2\.2250738585072007e-308|2\.2250738585072011e-308|1e309)$",
            &["4294967296"]),
        rule(942230, SqlInjection, 1, 5, ANY | PATH, "SQL injection: conditional and blind probes",
            &["case", "if(", "select", "having"],
            r#"\bcase\s+when\b.{1,80}\bthen\b|\b(?:if|iif)\(\s*(?:\(?\s*select\b|[\w'"]+\s*(?:=|<|>|~|like\b))|\(\s*select\s+(?:\d|count|sleep|if|case|char|ascii|substr|@@|version|user|database|null)|\bselect\s+(?:@@|version\s*\(|user\s*\(|database\s*\(|current_user|system_user|schema\s*\(|load_file|null\s*,|(?:if|case|sleep|benchmark|char|chr|concat|ascii|substring|hex|unhex)\s*\()|\bgroup\s+by\s+.{1,60}\bhaving\b"#,
            &["if(2="]),
        rule(942270, SqlInjection, 1, 5, ANY | PATH, "SQL injection: version and catalog variables",
            &["@@"],
            r"@@(?:version|datadir|hostname|basedir|tmpdir|servername|spid|language|identity|rowcount|global|session)",
            &["@@tmpdir"]),
        rule(942180, SqlInjection, 1, 5, ANY | PATH, "SQL injection: quoted string comparison",
            &["'", "\""],
            r#"['"][^'"]{0,20}['"]\s*(?:!=|<>|<=>|=|>=|<=)\s*['"]"#,
            &["''='"]),
        rule(942350, SqlInjection, 1, 5, ANY | PATH, "SQL injection: statement at the start of a value",
            &[";", "/"],
            r"^\s*[;/]\s*(?:insert|update|delete|drop|truncate|replace|alter|create|select|exec|execute|merge|grant|declare)\b",
            &[";drop"]),
        rule(942320, SqlInjection, 1, 5, ANY | PATH, "SQL injection: variables, casts and stored procedures",
            &["declare", "::", "exec", "procedure", "function"],
            r"\bdeclare\s*[@#]\w|\w::\s*(?:int|integer|bigint|smallint|text|varchar|numeric|bool|boolean|jsonb?|regclass|oid|bytea|inet|xml)\b|\bexec\s*\(\s*@|\bcreate\s+(?:or\s+replace\s+)?(?:procedure|function)\s+\w",
            &["d::int"]),
        rule(942540, SqlInjection, 1, 5, ANY | PATH, "SQL injection: quote closed and statement ended",
            &["'", "\"", "`"],
            // A backtick and `;` at the very end also end every JavaScript template literal
            // statement, which has two backticks: a lone one closes the application's quote.
            r#"['"]\s*;\s*(?:--|#|/\*|$)|`\s*;\s*(?:--|#|/\*)|^[^`]*`\s*;\s*$"#,
            &[r#"";"#]),
        rule(942550, SqlInjection, 1, 5, ANY | PATH, "SQL injection: JSON operators",
            &["'", "\"", "json_"],
            r#"['"]\s*[\[{][^'"]*(?:"[^"]*"[^'"]*)*[\]}]\s*['"]\s*(?:::\s*jsonb?\b|@>|<@|\?[|&]?|#>>?|->>?|#-|\|\||[<>]=?|=|-\s*\d)|\bjson_(?:extract|contains|search|keys|value|query)\s*\("#,
            &["'[1,2]' ?"]),
        rule(942560, SqlInjection, 1, 5, ANY | PATH, "SQL injection: MySQL scientific notation bypass",
            &[".e"],
            r"\b\d+\.e(?:[(),]|\.\w)",
            &["1.e("]),
        rule(942361, SqlInjection, 1, 5, ANY | PATH, "SQL injection: alias and table reference",
            &["from", "table"],
            r#"\b\d+\s+as\s*["'`][^"'`]*["'`]\s*from\b|(?:^|[;/'"`)])\s*create\s+(?:temporary\s+)?table\s+\w"#,
            &["/create table p"]),
        rule(942120, SqlInjection, 2, 5, ANY, "SQL injection: SQL operators",
            &["rlike", "regexp", "sounds", "between", "null", "like"],
            r#"\b(?:rlike|regexp|sounds\s+like)\b\s*['"(\d]|\bnot\s+between\s+\d|\bis\s+not\s+null\b\s*(?:--|#|;|$)|['"]\s*like\s*['"]%"#,
            &["rlike'"]),
        rule(942440, SqlInjection, 2, 5, ANY, "SQL injection: comment sequence after a quote",
            &["--", "#", "/*"],
            r#"['"`]\s*(?:\)\s*)*(?:--(?:\s|$)|#|/\*)"#,
            &[r##""#"##]),
        rule(942370, SqlInjection, 2, 5, ANY, "SQL injection: SELECT ... FROM",
            &["select"],
            r"\bselect\b.{1,100}\bfrom\b",
            &["select*from"]),
        rule(942380, SqlInjection, 2, 5, ANY, "SQL injection: DDL keywords",
            &["drop", "truncate", "delete", "insert", "update"],
            r"\b(?:drop|truncate)\s+table\b|\bdelete\s+from\b|\binsert\s+into\b.{0,60}\bvalues\b|\bupdate\s+\w+\s+set\s+\w+\s*=",
            &["drop table"]),
        rule(942480, SqlInjection, 2, 5, ANY, "SQL injection: hex literal or char building",
            &["0x", "char", "chr"],
            r"\b0x[0-9a-f]{8,}\b|\b(?:char|chr|nchar)\s*\(\s*\d",
            &["chr(1"]),
        // ---------------------------------------------------------------- 941 XSS
        rule(941110, CrossSiteScripting, 1, 5, ANY | PATH, "XSS: script tag",
            &["<script", "< script", "script>"],
            r"<\s*/?\s*script\b|\bscript\s*>",
            &["<script"]),
        rule(941120, CrossSiteScripting, 1, 5, ANY | PATH, "XSS: event handler attribute",
            &["="],
            r#"(?:^|[\s"'`;/0-9=(,<>])on[a-z]{3,40}\s*=(?:[^=]|$)"#,
            &["/onafe="]),
        rule(941130, CrossSiteScripting, 1, 5, ANY, "XSS: dangerous attributes",
            &["xlink", "xmlns", "formaction", "@import", "-moz-binding", "srcdoc", "behavior", "expression("],
            r#"\bxlink:href\s*=|\bxmlns(?::\w+)?\s*=\s*['"]?[^'"\s]*(?:xhtml|xsl|svg)|\bformaction\s*=|@import\b|-moz-binding|\bsrcdoc\s*=|\bbehavior\s*:\s*url|\bexpression\s*\("#,
            &["@import"]),
        rule(941140, CrossSiteScripting, 1, 5, ANY | PATH, "XSS: script URI scheme",
            &["script", "data:", "data :"],
            r"(?:java|vb|live|ecma|j|java\s?)script\s*:\s*[^\s]|\bdata\s*:\s*(?:text/html|image/svg\+xml|application/(?:x-)?(?:javascript|ecmascript|xhtml))|url\s*\(\s*['\x22]?\s*(?:java|vb)script",
            &["vbscript:m"]),
        rule(941160, CrossSiteScripting, 1, 5, ANY | PATH, "XSS: HTML injection of an active element",
            &["<"],
            r"<\s*/?\s*(?:[\w-]*:)?(?:script|iframe|frame|frameset|object|embed|applet|meta|link|style|svg|math|base|isindex|xss|import|vmlframe|marquee|template|portal|bgsound|layer|ilayer|xml|html|body|img|image|video|audio|source|input|form|button|details|dialog|select|textarea|keygen|animate\w*|set|handler|listener|x)\b[^<]*(?:>|/|\s(?:src|href|on\w+|style|action|data|formaction|background|dynsrc|lowsrc|srcdoc|autofocus|open|poster|code|codebase|values|to|from|attributename|implementation)\b)|<\W*(?:[^<>'\x22\s]*:)?\W*(?:s\W+c\W*r\W*i\W*p\W*t|s\W*c\W+r\W*i\W*p\W*t|f\W+o\W*r\W*m|f\W*o\W+r\W*m|s\W+t\W*y\W*l\W*e|s\W+v\W*g|l\W+i\W*n\W*k|o\W+b\W*j\W*e\W*c\W*t|e\W+m\W*b\W*e\W*d|a\W+p\W*p\W*l\W*e\W*t|i\W*f\W+r\W*a\W*m\W*e|b\W+a\W*s\W*e|b\W+o\W*d\W*y|m\W+e\W*t\W*a|i\W+m\W*g|v\W+i\W*d\W*e\W*o|a\W+u\W*d\W*i\W*o|d\W+i\W*a\W*l\W*o\W*g|i\W+s\W*i\W*n\W*d\W*e\W*x|a\W+n\W*i\W*m\W*a\W*t\W*e|m\W+a\W*r\W*q\W*u\W*e\W*e)(?:[^>\w]|$)|<\s*import\w*\s*implementation\s*=",
            &["<x>"]),
        rule(941180, CrossSiteScripting, 1, 5, ANY, "XSS: DOM sinks",
            &["document", "window", "innerhtml", "outerhtml", "fromcharcode", "cdata", "parentnode", "localstorage", "location"],
            r"\bdocument\s*\.\s*(?:cookie|write|writeln|domain|location|body\.innerhtml)\b|\.\s*(?:innerhtml|outerhtml|parentnode|insertadjacenthtml)\b|\bwindow\s*\.\s*(?:location|open|name|eval)\b|string\s*\.\s*fromcharcode|<!\[cdata\[|\blocalstorage\s*\.\s*getitem|\blocation\s*\.\s*(?:href|hash|replace|assign)\s*=",
            &["<![cdata["]),
        rule(941210, CrossSiteScripting, 1, 5, ANY | PATH, "XSS: obfuscated script URI scheme",
            &[":"],
            r"(?:j\W*a\W*v\W*a|v\W*b|l\W*i\W*v\W*e|e\W*c\W*m\W*a)\W*s\W*c\W*r\W*i\W*p\W*t\W*:",
            &["vbscript:"]),
        rule(941350, CrossSiteScripting, 1, 5, ANY, "XSS: UTF-7 encoded markup",
            &["+adw-", "+ad4-"],
            r"\+adw-|\+ad4-",
            &["+adw-"]),
        rule(941360, CrossSiteScripting, 1, 5, ANY, "XSS: JSFuck / hieroglyphy",
            &["[]"],
            r"![!+ ]\[\]|\[\][+ ]!|\(!\[\][+ ]\[\]\)|!!\[\]",
            &["!![]"]),
        rule(941370, CrossSiteScripting, 1, 5, ANY, "XSS: global object accessed by computed name or through comments",
            &["[", "/*"],
            r#"\b(?:self|document|this|top|window|parent|frames|globalthis)\s*(?:/\*.*?\*/\s*)*\)?\s*\[\s*['"`]|\b(?:self|document|this|top|window|parent|frames|globalthis)\s*(?:/\*.*?\*/\s*)+\)?\s*\.|\b(?:self|document|this|top|window|parent|frames|globalthis)\s*(?:/\*.*?\*/\s*)*\)?\s*\.\s*(?:/\*.*?\*/\s*)+\w"#,
            &[r#"self[""#]),
        rule(941390, CrossSiteScripting, 1, 5, ANY, "XSS: javascript function call",
            &["eval", "settimeout", "setinterval", "function", "alert", "prompt", "confirm", "import(", "atob", "btoa"],
            r#"(?:^|[^\w.$])(?:eval|settimeout|setinterval|execscript|alert|prompt|confirm|atob|btoa)\s*(?:\(|`)|\bnew\s+function\s*\(|\bimport\s*\(\s*['"`]\s*(?:data|https?):"#,
            &["eval("]),
        rule(941310, CrossSiteScripting, 1, 5, ANY, "XSS: US-ASCII malformed encoding (high-bit markup)",
            &["\u{bc}", "\u{be}"],
            r"\xc2\xbc\s*/?\s*[a-z][^>]{0,200}?(?:\xc2\xbe|>)|<\s*/?\s*[a-z][^>]{0,200}?\xc2\xbe",
            &["\u{bc}script\u{be}"]),
        rule(941400, CrossSiteScripting, 1, 5, ANY, "XSS: javascript call through a tagged template",
            &["`"],
            r"\.\s*(?:call|apply|bind|sort|map|filter|reduce|constructor|join|concat)\s*`|\b(?:reflect|function|object|array)\s*\.\s*\w+\s*(?:\.\s*\w+\s*)*`",
            &[".call`"]),
        rule(941200, CrossSiteScripting, 1, 5, ANY, "XSS: VML frame",
            &["vmlframe"],
            r"vmlframe",
            &["vmlframe"]),
        rule(941380, CrossSiteScripting, 2, 5, ANY, "XSS: template injection",
            &["{{"],
            r"\{\{.*?(?:constructor|\$eval|\$on|alert|prompt|__proto__|\.call\(|tostring).*?\}\}",
            &["{{constructor.constructor('alert(1)')()}}"]),
        // ---------------------------------------------------------------- 930 LFI / traversal
        rule(930100, PathTraversal, 1, 5, ANY | PATH, "Path traversal: hex-escaped dot-dot-slash",
            &["0x2e", "0x5c", "0x2f", ".."],
            r"(?:0x2e|\.){2,3}(?:0x2f|0x5c|/|\\)|(?:0x2f|0x5c|/|\\)(?:0x2e|\.){2,3}",
            &["0x2e0x2e0x2f", "/.."]),
        rule(930110, PathTraversal, 1, 5, ANY | PATH, "Path traversal: dot-dot-slash",
            &[".."],
            r"(?:^|[\\/;])\.{2,3}[\\/;]|[\\/;]\.{2,3}(?:[\\/;]|$)|^\.{2,3}$",
            &["../"]),
        rule(930120, PathTraversal, 1, 5, ANY | PATH, "LFI: operating system file access",
            &["etc", "proc", "sys", "boot.ini", ".ini", "windows", "winnt", "inetpub", ".ssh", "id_", "bash_", ".bashrc", ".ht", ".git", ".svn", ".env", "web.config", "wp-config", "var", "usr", ".aws", ".docker", "authorized_keys", "known_hosts", "php.ini", "my.cnf", "httpd.conf", "history", "viminfo", ".npmrc", ".netrc", ".pgpass", ".kube", "system32", "autoexec", "/dev/", ".sql", ".azure", ".gcloud", "terraform", "vault"],
            r"(?:^|[\\/\s=:;'\x22])(?:\.?[\\/])?(?:etc[\\/]+(?:passwd|shadow|group|hosts|issue|motd|crontab|sudoers|master\.passwd|subuid|subgid|gshadow|httpd|apache2?|nginx|mysql|ssh|security|profile|environment|hostname|resolv\.conf|fstab|inittab|network|os-release|lsb-release|php\d?|init\.d|rc\.d|cron\.\w+|pam\.d|ld\.so\.\w+|aliases|exports|ftpusers|netconfig|redhat-release|debian_version|timezone|localtime|shells|services|protocols)|proc[\\/]+[\w-]+|sys[\\/]+(?:class|kernel|devices|power|module|firmware|block|bus)\b|dev[\\/]+(?:tcp|udp|null|zero|random|urandom|mem|kmem|shm)\b|var[\\/]+(?:log|mail|spool|run|lib[\\/]+mysql|www[\\/].{0,40}\.(?:php|conf|ini|env))\b|usr[\\/]+local[\\/]+(?:apache|apps|etc|nginx)|(?:windows|winnt)[\\/]+(?:system32|system\.ini|win\.ini|repair|debug|panther|iis\d*\.log)|inetpub[\\/]|autoexec\.bat|boot\.ini|win\.ini|system\.ini)|(?:^|[\\/])\.(?:docker[\\/]|kube[\\/]|azure[\\/]|gcloud[\\/]|terraform\.d[\\/]|vault-token|ssh[\\/]|aws[\\/]credentials|docker[\\/]config|kube[\\/]config|git[\\/](?:config|head|index|logs)|svn[\\/]|bash_history|bash_profile|bashrc|zsh_history|mysql_history|psql_history|viminfo|npmrc|netrc|pgpass|htaccess|htpasswd|env(?:\.\w+)?$|gnupg)|\bid_(?:rsa|dsa|ecdsa|ed25519)(?:\.pub)?\b|\b(?:backup|dump|database|db|site|data)\.sql\b|\bauthorized_keys\b|\bknown_hosts\b|\b(?:web\.config|wp-config\.php|php\.ini|my\.cnf|httpd\.conf|applicationhost\.config)\b",
            &[".ssh/"]),
        rule(930130, PathTraversal, 1, 5, PATH | FILENAME, "Restricted file access",
            &[".git", ".svn", ".hg", ".env", ".ht", ".ds_store", ".aws", ".ssh", ".docker", "web.config", "wp-config", ".bzr", ".idea", ".vscode", ".npmrc", ".kube"],
            r"(?:^|/)\.(?:git|svn|hg|bzr|env|htaccess|htpasswd|ds_store|aws|ssh|docker|idea|vscode|npmrc|kube)(?:/|$|\.)|(?:^|/)(?:web\.config|wp-config\.php)$",
            &[".env"]),
        // ---------------------------------------------------------------- 931 RFI
        rule(931100, RemoteFileInclusion, 1, 5, ARG | COOKIE, "RFI: URL with an IP address",
            &["://"],
            r"^(?:file|ftps?|https?|gopher|dict|ldap|tftp)://\[?(?:\d{1,3}\.){3}\d{1,3}|^(?:file|ftps?|https?)://\[[0-9a-f:]+\]",
            &["http://[::]"]),
        rule(931110, RemoteFileInclusion, 1, 5, ANY, "RFI: common RFI parameter with a URL",
            &["://"],
            r"(?:\binclude(?:_once)?\s*\(?|mosconfig_absolute_path|_conf\[path\]|_server\[document_root\]|gallery_basedir|path\[docroot\]|appserv_root|config\[root_dir\]|_cfg\[\w+\])\s*=?\s*['\x22(]?\s*(?:file|ftps?|https?)://",
            &["include(http://evil.example/shell.txt", "mosconfig_absolute_path=http://evil.example/x"]),
        rule(931120, RemoteFileInclusion, 1, 5, ARG | COOKIE, "RFI: URL ending with a question mark",
            &["://"],
            r"^(?:file|ftps?|https?)://.*?\?+$",
            &["https://foo.bar?"]),
        rule(931130, RemoteFileInclusion, 2, 5, ARG | COOKIE, "RFI: off-site URL in an argument",
            &["://"],
            r"^(?:file|ftps?|https?|gopher|dict|ldap|tftp|jar|netdoc)://",
            &["ftp://"]),
        // ---------------------------------------------------------------- 932 command injection
        rule(932140, CommandInjection, 1, 5, ANY, "Windows command injection: FOR/IF",
            &["%", "exist", "defined", "errorlevel", "cmdextversion", "equ", "neq", "lss", "leq", "gtr", "geq", "==", "not(", "not ("],
            r#"\bfor(?:\s*/[dflr](?:\s+[^%]+?)?)?\s+%+[^\s]+\s+in\s*\(.*\)\s*do\b|\bif(?:\s*/i)?(?:\s+not)?\s+(?:exist\b|defined\b|errorlevel\b|cmdextversion\b)|\bif(?:\s*/i)?(?:\s+not)?\s*(?:\([^)]*\)|[^\s()]+)\s*\b(?:equ|neq|lss|leq|gtr|geq)\b|\bif(?:\s*/i)?(?:\s+not)?\s*(?:\[[^\]]*\]|\{[^}]*\}|\([^)]*%[^)]*\)|[^\s=]*%[^\s=]*)\s*==|\bif(?:\s*/i)?\s+not\s*\("#,
            &["if not("]),
        rule(932120, CommandInjection, 1, 5, ANY, "Windows PowerShell command",
            &["invoke-", "iex", "new-object", "download", "start-process", "get-", "set-", "remove-item", "-enc", "-nop", "-noprofile", "-windowstyle", "-executionpolicy", "-exec", "powershell", "pwsh", "frombase64string"],
            r"\binvoke-(?:webrequest|expression|command|restmethod|item|wmimethod|shellcode|mimikatz)\b|\biex\s*[(\x22'$]|\bnew-object\s+(?:-typename\s+)?(?:system\.)?net\.(?:webclient|sockets)|\.download(?:string|file|data)\s*\(|\bstart-process\b|\bget-(?:childitem|content|process|wmiobject|itemproperty|credential|acl|service|localuser)\b|\bset-(?:content|itemproperty|executionpolicy|mppreference)\b|\bremove-item\b|\s-(?:e|ec|en|enc|enco|encodedcommand)\s+[a-z0-9+/=]{12,}|\s-(?:nop|noprofile|noninteractive|windowstyle\s+hidden|w\s+hidden|executionpolicy\s+bypass|ep\s+bypass|exec\s+bypass)\b|\b(?:powershell|pwsh)(?:\.exe)?\b\s+-|frombase64string\s*\(",
            &["iex ("]),
        rule(932370, CommandInjection, 1, 5, ANY, "Windows command injection",
            &["cmd", "certutil", "bitsadmin", "mshta", "rundll32", "regsvr32", "wmic", "net ", "reg ", "schtasks", "tasklist", "taskkill", "systeminfo", "ipconfig", "type ", "dir ", "del ", "copy ", "xcopy", "attrib", "icacls", "sc ", "powershell", "cscript", "wscript", "msiexec", "vssadmin", "bcdedit", "netsh", "findstr", "whoami", "bcd", "diskpart", "cipher", "fsutil", "takeown", "wevtutil", "forfiles", "mklink", "runas", "psexec", "iwr", "irm", "iex", "icm", "saps"],
            r#"\bcmd(?:\.exe)?\s*/[ckqsv]\b|(?:^|[;&|`\n(]|\$\()\s*(?:[a-z]:\\[^\s]*\\)?(?:cmd(?:\.exe)?|powershell(?:\.exe)?|certutil(?:\.exe)?\s+-|bitsadmin\s+/|mshta(?:\.exe)?\s|rundll32(?:\.exe)?\s|regsvr32(?:\.exe)?\s|wmic\s|net1?\s+(?:user|localgroup|group|share|view|use|start|stop)\b|reg\s+(?:add|query|delete|save|export)\b|schtasks\s+/|tasklist\b|taskkill\s+/|systeminfo\b|ipconfig\b|type\s+(?:[a-z]:|%\w+%|\\)|dir\s+[a-z%.\\/]|del\s+/|copy\s+(?:/[a-z]\s+)*(?:[a-z]:|%\w+%|\\)|xcopy\s|attrib\s|icacls\s|sc\s+(?:query|create|start|stop|config)\b|cscript\s|wscript\s|msiexec\s|vssadmin\s|bcdedit\b|netsh\s|findstr\s|whoami\b|bcdboot\b|bcdedit\b|diskpart\b|cipher\s+/|fsutil\s|takeown\s|wevtutil\s|forfiles\s|mklink\s|runas\s|psexec\b|iwr\s|irm\s|iex\s|icm\s|saps\s)|\b(?:certutil|bitsadmin|mshta|rundll32|regsvr32|wmic)(?:\.exe)?\s+[/-]?\w"#,
            &["cmd"]),
        rule(932130, CommandInjection, 1, 5, ANY, "Unix shell expression",
            &["$(", "`", "<(", ">(", "${ifs", "$ifs", "${", "[", "$shell", "${shell"],
            r"\$\(\s*[a-z/.$\\'\x22][^)]*\)|`\s*(?:[\w/.]*/)?CMD\b[^`]*`|[<>]\(\s*[a-z/][^)]*\)|\$\{?ifs\b|\$\{[a-z_]*[#%:/^,][^}]*\}|\$\{\s*!|/[\w.-]*\[!?[a-z][a-z-]*\]|\$\[[^\]]*\]|\$\(\(|\$\{?shell\b",
            &["$(("]),
        rule(932230, CommandInjection, 1, 5, ANY, "Unix command injection: command after a shell separator",
            &[";", "|", "&", "`", "$(", "{"],
            // `${id}` expands a variable (and is every template literal): a brace opens a
            // command group only without a `$` before it.
            "(?:[;|&`]|(?:^|[^$])\\{|\\$\\()\\s*(?:\\$\\w+\\s*)?WRAPPER(?:\\\\)?(?:[\\w/.]*/)?\\\\?CMD(?:\\$\\w+|\\$\\{\\w*\\})*(?:[\\s;|&<>`)},'\"]|$)",
            &[";ps"]),
        rule(932231, CommandInjection, 1, 5, ANY, "Unix command injection: command run through a wrapper or escaped at the start of a value",
            &[" ", "\\"],
            "^(?:\\s*['\"]?WRAPPLUS|\\s*\\\\)(?:\\\\)?(?:[\\w/.]*/)?\\\\?CMD(?:\\$\\w+|\\$\\{\\w*\\})*(?:[\\s;|&<>`)},'\"]|$)",
            &[r#"\ls"#]),
        rule(932235, CommandInjection, 1, 5, ANY, "Unix command injection: common command after a separator",
            &[";", "|", "&", "`", "$("],
            "(?:[;|&`]|\\$\\()\\s*(?:\\$\\w+\\s*)?WRAPPER(?:\\\\)?(?:[\\w/.]*/)?\\\\?(?:WORDARG|UNIX_WORD\\s*['\"]?\\s*$|cd\\s+[/~.$])",
            &[";set"]),
        rule(932250, CommandInjection, 1, 5, ARG | COOKIE | HEADER | BODY, "Unix common command with shell arguments at the start of a value",
            &[" "],
            "^['\"]?\\s*(?:[\\w/.]*/)?WORDARG",
            &["cat /"]),
        rule(932260, CommandInjection, 1, 5, ARG | COOKIE | HEADER | BODY, "Unix command at the start of a value with shell arguments",
            &[" "],
            "^['\"]?\\s*WRAPPER(?:\\\\)?(?:[\\w/.]*/)?CMD\\s+(?:-{1,2}[a-z0-9]|[/~$.'\"`*]|\\d|[a-z0-9_.-]+\\s*(?:[|;&<>]|$)|[a-z0-9_-]+\\.[a-z0-9]+)",
            &["ls /"]),
        rule(932160, CommandInjection, 1, 5, ANY, "Unix shell code: executable path",
            &["bin/", "usr/", "sbin", "/dev/", "/tmp/"],
            r"(?:^|[^\w.-])/?(?:usr/(?:local/)?)?s?bin/[a-z0-9_.+-]+|/dev/(?:tcp|udp)/|(?:^|\s)/tmp/[\w.-]+\s*(?:;|\||&|$)",
            &["/bin/ab"]),
        rule(932170, CommandInjection, 1, 5, ANY, "Shellshock",
            &["()"],
            r"^\s*\(\s*\)\s*\{",
            &["() {"]),
        rule(932175, CommandInjection, 1, 5, ANY, "Unix shell builtin used to define commands",
            &["alias", "function", "export", "trap"],
            r"\balias\s+(?:[-+]\w+\s+)*[^\s=]+=|\bfunction\s+\w+\s*\(\s*\)\s*\{|\bexport\s+\w+=\S*\s*[;&|]|\btrap\s+['\x22][^'\x22]+['\x22]\s+\w+",
            &["alias a="]),
        rule(932180, CommandInjection, 1, 5, FILENAME | PATH, "Restricted file upload",
            &[".ht", "web.config", ".user.ini", "php.ini", ".bashrc", ".profile", "authorized_keys", "settings", "config", ".env", "composer", "package", ".npmrc"],
            r"(?:^|[/\\])(?:\.htaccess|\.htpasswd|web\.config|\.user\.ini|php\.ini|\.bashrc|\.bash_profile|\.profile|authorized_keys|settings\.\s*php|config\.ya?ml|\.env|composer\.json|package\.json|\.npmrc|\.git[\\/]config)\s*$",
            &["/.env"]),
        rule(932280, CommandInjection, 1, 5, ANY, "Unix brace expansion",
            &["{"],
            r"\{(?:[a-z_][\w/.-]*)?,[\w/.,-]*[a-z][\w/.,-]*\}",
            &["{a,b}"]),
        rule(932270, CommandInjection, 1, 5, ANY, "Unix tilde expansion",
            &["~"],
            r"(?:^|[\s;|&])~[+-]\d*(?:$|[\s;|&/])",
            &["~+"]),
        rule(932330, CommandInjection, 1, 5, ANY, "Unix shell history invocation",
            &["!"],
            r"(?:^|[;&|\s!])!(?:-\d+|\$|#)(?:\s|$|[;&|!])",
            &["!-1!"]),
        rule(932190, CommandInjection, 2, 5, ANY, "Unix wildcard bypass",
            &["?", "*"],
            r"/(?:[a-z?*]*[?*][a-z?*]*)/(?:[a-z?*]*[?*][a-z?*]*)",
            &["/*/*"]),
        // ---------------------------------------------------------------- 933 PHP
        rule(933100, PhpInjection, 1, 5, ANY, "PHP injection: opening or closing tag",
            &["<?", "[php", "?>"],
            r"<\?(?:php\b|=|\s|$)|\[\[?php\b|\?>\s*$|<\?(?:php)?\s*(?:eval|system|exec|echo|print)",
            &["<?"]),
        rule(933110, PhpInjection, 1, 5, FILENAME, "PHP script file upload",
            &[".ph", ". ph", ".inc", ". inc", ".pg", ". pg"],
            r"\.\s*(?:php\d*|phtml|phar|phps|pht|phpt|pgif|inc)(?:[.\s]|%00|\x00|$)",
            &[".php"]),
        rule(933220, PhpInjection, 1, 5, FILENAME, "PHP session file upload",
            &["sess_"],
            r"(?:^|[\\/])sess_[\w,-]{16,}$",
            &["sess_1234567890abcdefghij"]),
        rule(933120, PhpInjection, 1, 5, ANY, "PHP configuration directive",
            &["="],
            r"\b(?:allow_url_(?:fopen|include)|auto_(?:prepend|append)_file|disable_(?:functions|classes)|open_basedir|safe_mode|register_globals|magic_quotes_gpc|display_errors|file_uploads|enable_dl|expose_php|suhosin\.\w+|include_path|sendmail_path|short_open_tag|zend\.\w+|upload_tmp_dir|user_ini\.filename|extension_dir|cgi\.force_redirect|session\.save_path|error_log|log_errors|html_errors|assert\.active|phar\.readonly|mbstring\.func_overload|memory_limit|max_execution_time|max_input_time|post_max_size|upload_max_filesize|opcache\.\w+|xdebug\.\w+|pcre\.\w+|date\.timezone|default_charset|output_buffering|variables_order|request_order|precision|serialize_precision|realpath_cache_\w+|file_uploads|max_file_uploads|allow_url_\w+|apc\.\w+|mysqli?\.\w+|pdo_\w+\.\w+|auto_detect_line_endings|default_socket_timeout|user_agent|arg_separator\.\w+|unserialize_callback_func|highlight\.\w+)\s*=",
            &["precision="]),
        rule(933130, PhpInjection, 1, 5, ANY, "PHP injection: superglobal variables",
            &["$_", "$globals", "$http_", "$php_errormsg", "$argv"],
            r"\$(?:_(?:get|post|cookie|server|env|files|request|session)\b|globals\b|http_(?:get|post|cookie|server|env|session|post_files)_vars\b|http_raw_post_data\b|http_response_header\b|php_errormsg\b|argv\b)",
            &["$_get"]),
        rule(933135, PhpInjection, 1, 5, ANY, "PHP injection: variable variables",
            &["${", "$$"],
            r"\$\s*\{\s*['\x22]|\$\$+[a-z_{]",
            &["$$a"]),
        rule(933140, PhpInjection, 1, 5, ANY, "PHP injection: I/O stream wrapper",
            &["php://"],
            r"php://(?:std(?:in|out|err)|(?:in|out)put|fd|memory|temp|filter)",
            &["php://stdout"]),
        rule(933200, PhpInjection, 1, 5, ANY, "PHP injection: stream wrapper scheme",
            &["://"],
            r"\b(?:bzip2|expect|glob|ogg|phar|rar|ssh2(?:\.\w+)?|zip|zlib|compress\.(?:zlib|bzip2)|data|php)://",
            &["php://"]),
        rule(933150, PhpInjection, 1, 5, ANY | PATH, "PHP injection: high-risk function name",
            &["("],
            r#"(?:^|[^\w$>.:-])(?:assert(?:_options)?|base64_decode|call_user_func(?:_array)?|create_function|eval|exec|file_get_contents|file_put_contents|fopen|fwrite|fputs|gzinflate|gzuncompress|gzdecode|include(?:_once)?|require(?:_once)?|passthru|phpinfo|popen|proc_open|preg_replace(?:_callback)?|readfile|shell_exec|show_source|highlight_file|system|str_rot13|unserialize|move_uploaded_file|curl_exec|fsockopen|pfsockopen|pcntl_exec|posix_\w+|ini_(?:set|get|get_all|restore)|putenv|getenv|array_(?:map|filter|walk|reduce|diff_ukey|udiff|uintersect)|u[ak]?sort|ob_start|escapeshell(?:arg|cmd)|php_uname|phpversion|get_defined_(?:vars|functions|constants)|hex2bin|convert_uu(?:de|en)code|register_(?:shutdown|tick)_function|parse_ini_(?:file|string)|symlink|chmod|chown|var_(?:dump|export)|print_r|debug_zval_dump|mb_ereg_replace(?:_callback)?|iterator_apply|forward_static_call(?:_array)?|func_get_args|get_current_user|getcwd|getmypid|scandir|opendir|readdir|unlink|rmdir|stream_get_contents|fread|fgets|fpassthru|readgzfile|gzfile|parse_str|settype|strrev|rawurldecode|unpack|serialize|strip_tags|intval|filegroup|fileowner|file_exists|is_array|substr|bzdecompress|zlib_decode|curl_init|gzdecode|session_\w+|set_(?:error|exception)_handler|spl_autoload_register|lcg_value|md5|sha1|crc32)\s*(?:/\*.*?\*/\s*)*\(.*\)"#,
            &[",md5(4)"]),
        rule(933160, PhpInjection, 1, 5, ANY | PATH, "PHP injection: high-risk function name",
            &["phpinfo", "shell_exec", "passthru", "proc_open", "popen", "pcntl_exec", "base64_decode", "create_function", "call_user_func", "file_get_contents", "file_put_contents", "move_uploaded_file", "show_source", "highlight_file", "gzinflate", "str_rot13", "fsockopen", "php_uname", "system", "exec", "eval", "assert", "fsockopen", "gzdecode", "bzdecompress", "zlib_decode", "curl_"],
            r#"^(?:phpinfo|shell_exec|passthru|proc_open|popen|pcntl_exec|base64_decode|create_function|call_user_func(?:_array)?|file_get_contents|file_put_contents|move_uploaded_file|show_source|highlight_file|gzinflate|str_rot13|fsockopen|php_uname|system|exec|eval|assert)$|\b(?:phpinfo|shell_exec|passthru|proc_open|pcntl_exec|php_uname)\b|(?:call_user_func(?:_array)?|fsockopen|gzdecode|gzinflate|gzuncompress|bzdecompress|zlib_decode|curl_init|curl_exec|base64_decode|str_rot13|create_function|file_get_contents|file_put_contents)\s*=?\s*\(|['"](?:system|exec|passthru|shell_exec|eval|assert|popen|proc_open|phpinfo)['"]\s*\("#,
            &["exec"]),
        rule(933170, PhpInjection, 1, 5, ANY, "PHP injection: serialized object",
            &[":\""],
            r#"[oc]:\+?\d+:"[^"]+":\+?\d+:\{.*\}"#,
            &[r#"o:8:"stdclass":0:{}"#]),
        rule(933180, PhpInjection, 1, 5, ANY, "PHP injection: variable function call",
            &["$"],
            r#"\$+(?:[a-z_\x7f-\xff][\w\x7f-\xff]*|\s*\{.+\})(?:\s|\[.+\]|\{.+\}|/\*.*\*/|//.*|#.*)*\(.*\)"#,
            &["$a(1)"]),
        rule(933210, PhpInjection, 1, 5, ANY, "PHP injection: variable function call without a variable",
            &[");", ") ;"],
            r#"(?:\((?:.+\)\s*(?:["'][\-\w]+["'])?\s*\(.+|[^)]*string[^)]*\)[\s"'\-.\w\[\]{}]+\([^)]*)|(?:\[\d+\]|\{\d+\}|\$[^(),./;\\\s]+|["'][\-\w\\]+["'])\s*\(.+)\)\s*;"#,
            &["[0](ls);"]),
        decoded(rule(933161, PhpInjection, 1, 5, ANY | PATH, "PHP injection: function call hidden behind line comments",
            &[],
            r"(?i)\b(?:exec|system|passthru|shell_exec|eval|assert|popen|proc_open|include|require|file_get_contents|base64_decode)\s*(?:(?:#|//)[^\n]*[\r\n]+\s*)+\(",
            &["exec#\n ("])),
        rule(933190, PhpInjection, 3, 5, ANY, "PHP closing tag",
            &["?>"],
            r"\?>",
            &["?>"]),
        // ---------------------------------------------------------------- 944 Java
        rule(944100, JavaInjection, 1, 5, ANY, "Java: Runtime or ProcessBuilder",
            &["java.lang."],
            r"java\.lang\.(?:runtime|processbuilder|reflect|classloader|system\b|thread\b)",
            &["java.lang.system"]),
        rule(944110, JavaInjection, 1, 5, ANY, "Java: process execution with deserialization",
            &["runtime", "processbuilder"],
            r"(?:runtime|processbuilder).*(?:unmarshaller|base64data|java\.)|(?:unmarshaller|base64data|java\.).*(?:runtime|processbuilder)",
            &["java.runtime"]),
        rule(944120, JavaInjection, 1, 5, ANY, "Java: deserialization gadget with process execution",
            &["runtime", "processbuilder"],
            r"(?:clonetransformer|forclosure|instantiatefactory|instantiatetransformer|invokertransformer|prototypeclonefactory|prototypeserializationfactory|whileclosure|getproperty|filewriter|xmldecoder).*(?:runtime|processbuilder)|(?:runtime|processbuilder).*(?:clonetransformer|forclosure|instantiatefactory|instantiatetransformer|invokertransformer|prototypeclonefactory|prototypeserializationfactory|whileclosure|getproperty|filewriter|xmldecoder)",
            &["runtime.forclosure"]),
        rule(944130, JavaInjection, 1, 5, ANY, "Java: class from a dangerous package",
            &["java", "sun.", "jdk.", "org.", "com.", "bsh.", "groovy.", "clojure.", "javassist", "ognl", "freemarker", "net.sf", "jndi", "oracle."],
            r"\b(?:java\.(?:lang|io|net|nio|beans|rmi|security|util\.(?:zip|jar|logging|prefs|concurrent|function|stream|spi|regex|scanner|timer|hashmap|hashtable|properties|serviceloader|priorityqueue|treemap|hashset|linkedhashmap)|sql|awt|applet|text|time\.\w+|math\.big\w+)|javax\.(?:naming|script|management|xml|rmi|el|faces|servlet|activation|imageio|swing|sql|crypto|security|sound|print|tools|transaction|persistence|jws|enterprise|resource|annotation|jdo|ejb|mail|jms|ws|wsdl|validation|inject|ws)|sun\.(?:misc|reflect|rmi|net|nio|security|tools|print|applet|awt|corba|invoke|jvmstat|management)|com\.sun\.(?:org|jndi|rowset|corba|management|jmx|tools|xml|script|crypto|net|security|imageio|media|jndi|rmi|naming|nio|beans|java|proxy|mail|istack|jersey|ws|faces|javafx|deploy|jdi|jmx|source|tracing|javadoc|jarsigner|el)|jdk\.(?:internal|nashorn|jshell|jfr|management|naming|net|nio|jpackage|javadoc|jlink|jdeps|jcmd|jconsole|jdi)|org\.apache\.(?:commons\.(?:collections\d?|beanutils|fileupload|io|configuration\d?|jxpath|lang\d?|logging|text|vfs\d?|digester\d?|dbcp\d?|pool\d?|codec|jelly|ognl)|xalan|xerces|bcel|wicket|myfaces|tomcat|catalina|naming|log4j|velocity|struts2?|shiro|camel|cxf|xbean|aries|batik|axis2?|openjpa|activemq|click|el|jasper|coyote|xmlbeans|xpath|bsf|axis|ibatis|tapestry|ignite|karaf)|org\.springframework\.(?:beans|context|core|jndi|transaction|aop|expression|web|jmx|remoting|scripting|cache|jdbc|orm|validation|util)|org\.codehaus\.(?:groovy|jackson)|org\.mozilla\.(?:javascript|classfile)|org\.hibernate\.|org\.python\.|org\.jboss\.|org\.eclipse\.(?:jetty|osgi|jdt)|org\.slf4j\.|org\.aspectj\.|org\.yaml\.snakeyaml|org\.jruby\.|org\.jdom2?\.|org\.dom4j\.|org\.w3c\.dom|org\.xml\.sax|org\.mvel2?\.|org\.postgresql\.|org\.h2\.|org\.hsqldb\.|org\.apache\.|bsh\.(?:interpreter|xthis|console)|groovy\.(?:lang|util|ui)|clojure\.(?:lang|core|main)|com\.mchange\.v2|com\.alibaba\.fastjson|com\.fasterxml\.jackson\.databind|com\.thoughtworks\.xstream|com\.mysql\.|com\.zaxxer\.hikari|com\.rometools|com\.caucho|com\.ibm\.|com\.esotericsoftware|com\.google\.(?:inject|common\.(?:reflect|io))|oracle\.(?:jdbc|jms|toplink)|javassist\.|ognl\.|freemarker\.(?:template|core)|net\.sf\.(?:json|jasperreports|ehcache|cglib)|jndi\.)",
            &["java.io"]),
        rule(944150, JavaInjection, 1, 5, ANY | PATH, "Java: Log4Shell lookup",
            &["${"],
            r"\$\{[^}]{0,200}?(?:jndi|\$\{|::-|(?:lower|upper|env|sys|ctx|date|main|java|base64|k8s|docker|spring|web|bundle|marker|log4j|sd|event|map|jvmrunargs)\s*:)",
            &["${${"]),
        rule(944200, JavaInjection, 1, 5, ANY, "Java: serialized object magic bytes",
            &["ro0ab", "aced0005", "\u{ac}\u{ed}", "kztaau", "cs7qaf"],
            r"\bro0ab|\baced0005|\xc2\xac\xc3\xad\x00?\x05|\bkztaau|\bcs7qaf",
            &["ro0ab"]),
        rule(944140, JavaInjection, 1, 5, FILENAME, "Java: JSP upload",
            &[".jsp", ".jspx", ".jsf", ".jws"],
            r"\.(?:jspx?|jsf|jws|jhtml)(?:\.|$|\s)",
            &[".jsp"]),
        rule(944240, JavaInjection, 2, 5, ANY, "Java: deserialization gadget class",
            &["transformer", "closure", "factory", "xmldecoder"],
            r"\b(?:clonetransformer|forclosure|instantiatefactory|instantiatetransformer|invokertransformer|prototypeclonefactory|prototypeserializationfactory|whileclosure|xmldecoder|chainedtransformer|constanttransformer)\b",
            &["forclosure"]),
        rule(944250, JavaInjection, 2, 5, ANY, "Java: Java with Runtime or ProcessBuilder",
            &["java"],
            r"java\b.+(?:runtime|processbuilder)",
            &["java.runtime"]),
        // ---------------------------------------------------------------- 921 protocol attacks
        decoded(rule(921110, ProtocolEnforcement, 1, 5, ANY, "HTTP request smuggling in an argument",
            &[],
            r"(?i)[\r\n]\W*?(?:get|post|head|options|connect|put|delete|trace|track|patch|propfind|propatch|mkcol|copy|move|lock|unlock)\s+[^\s]+\s+http/\d",
            &["\nGET / HTTP/1"])),
        decoded(rule(921120, ProtocolEnforcement, 1, 5, ANY, "HTTP response splitting",
            &[],
            r"(?i)[\r\n]\W*?(?:content-(?:type|length)|set-cookie|location)\s*:\s*\w",
            &["\nContent-Type: i"])),
        decoded(rule(921130, ProtocolEnforcement, 1, 5, ANY, "HTTP response splitting: injected response",
            &[],
            r"(?i)[\r\n]\W*?(?:http/\d|<(?:html|meta)\b)",
            &["\r\n\r\n<HTML"])),
        decoded(rule(921150, ProtocolEnforcement, 1, 5, ARG_NAME | COOKIE_NAME, "CR/LF in an argument name",
            &[],
            r"[\r\n]",
            &["\r"])),
        decoded(rule(921160, ProtocolEnforcement, 1, 5, ARG_NAME, "Header injection through an argument name",
            &[],
            r"(?i)[\r\n]+(?:\s|location|refresh|(?:set-)?cookie|(?:x-)?(?:forwarded-(?:for|host|server)|host|via|remote-ip|remote-addr|originating-ip))\s*:",
            &["x\r\nlocation: http://evil.example"])),
    ];
    rules.push(header(
        rule(913100, ScannerDetection, 1, 5, HEADER, "Security scanner user agent",
            &["nikto", "sqlmap", "nmap", "nessus", "openvas", "acunetix", "netsparker", "w3af", "dirbuster", "gobuster", "dirb", "wfuzz", "masscan", "zgrab", "nuclei", "arachni", "skipfish", "havij", "jbrofuzz", "webinspect", "appscan", "paros", "whatweb", "wpscan", "joomscan", "fimap", "commix", "hydra", "metasploit", "morfeus", "zmeu", "blackwidow", "n-stealth", "nstalker", "grabber", "webshag", "sqlninja", "pangolin", "bsqlbf", "ffuf", "feroxbuster", "zap", "burp", "xsser", "brutus", "nasl", "absinthe", "mysqloit", "webvulnscan", "floodgate", "sf/", "struts-pwn", "jorgee", "crimscanner", "cgichk", "httpx", "interactsh", "leviathan"],
            r"\b(?:nikto|sqlmap|nmap|nessus|openvas|acunetix|netsparker|w3af|dirbuster|gobuster|dirb|wfuzz|masscan|zgrab|nuclei|arachni|skipfish|havij|jbrofuzz|webinspect|appscan|paros|whatweb|wpscan|joomscan|fimap|commix|hydra|metasploit|morfeus|zmeu|blackwidow|n-stealth|nstalker|grabber|webshag|sqlninja|pangolin|bsqlbf|ffuf|feroxbuster|owasp[ _-]?zap|zaproxy|burp(?:suite|collaborator)?|xsser|brutus|nasl|absinthe|mysqloit|webvulnscan|floodgate|struts-pwn|jorgee|crimscanner|cgichk|interactsh|leviathan)\b",
            &["havij"]),
        "user-agent",
    ));
    rules.extend(beyond_crs::rules());
    for r in &mut rules {
        if ["CMD", "WORDARG", "WRAPPER", "WRAPPLUS", "UNIX_WORD"]
            .iter()
            .any(|k| r.pattern.contains(k))
        {
            // Leaked on purpose: `build` runs once per process (see `builtin`).
            r.pattern = leak(
                r.pattern
                    .replace("WORDARG", &format!("{UNIX_WORD}{SHELL_ARG}"))
                    .replace("UNIX_WORD", UNIX_WORD)
                    .replace("WRAPPLUS", &WRAPPER.replace(")*", ")+"))
                    .replace("WRAPPER", WRAPPER)
                    .replace("CMD", UNIX_CMD),
            );
        }
    }
    rules
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Kinds a rule applies to.
pub fn applies(rule: &RuleDef, kind: Kind, header_name: &str) -> bool {
    if rule.scope & kind.bit() == 0 {
        return false;
    }
    match rule.header {
        Some(h) => kind == Kind::Header && header_name.eq_ignore_ascii_case(h),
        None => true,
    }
}
